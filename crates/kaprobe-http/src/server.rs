//! The keep-alive server behind `kaprobe serve`.
//!
//! One tokio current-thread runtime runs every connection as a local task. Each connection's
//! protocol logic is the I/O-free state machine in [`proto`]; [`conn`] drives it over a socket
//! with the idle and header timers, the soft close and the RST close. Nothing here prints:
//! every closed connection is reported to the caller as a [`CloseEvent`].
//!
//! Dependencies run one way, from the leaves up; no module imports one that imports it back:
//! - leaves: `config` (settings and their ranges), `close` (why and how a connection ended),
//!   [`date`], `query`, [`push::req`] (push requests from the head), [`push::store`] (rooms);
//! - [`stats`], [`parse`] (request heads; bodies via [`crate::h1`]), [`proto`], [`session`];
//! - `shared` (the connection registry and the server's shared state), `lot` (the parking
//!   lot's epoll set and queues), `metrics`;
//! - [`push`] (WebSocket, event stream, polling, publishing), then [`conn`] (one connection,
//!   handing push requests to [`push`]), then [`park`] (tasks, parking and waking);
//! - [`h2`] (`--http2`: one HTTP/2 connection on the `h2` crate) and [`tls`] (`--tls-cert`:
//!   the handshake, ALPN, and HTTP/1.1 over TLS);
//! - this module: accepting (and telling h2c from HTTP/1.1 on a plain port), running and
//!   shutting down.

mod close;
mod config;
pub mod conn;
pub mod control;
pub mod date;
pub mod h2;
mod lot;
mod metrics;
pub mod park;
pub mod parse;
pub mod proto;
pub mod push;
mod query;
pub mod session;
mod shared;
pub mod stats;
pub mod tls;

use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use tokio::time::Instant;

use crate::Error;
pub use close::{CloseEvent, Ending, Reason};
pub use config::{Advertise, CloseStyle, Config, GoawayStyle, TlsFiles, GOAWAY_GRACE};
pub use control::ConfigChange;
use park::kill_conn;
use shared::{Ctl, Shared};
pub use stats::Stats;

/// What the server did over its life, returned when it stops.
#[derive(Debug, Clone, Copy)]
pub struct Summary {
    pub connections: u64,
    pub requests: u64,
    /// Connections still open when the drain timeout ran out.
    pub cut_at_drain: u64,
}

/// Bind a listening TCP socket (SO_REUSEADDR, IPV6_V6ONLY for IPv6, backlog 4096), with
/// SO_REUSEPORT when `reuse_port` (several server processes sharing one address).
///
/// # Errors
/// [`Error::Io`] naming the address.
pub fn bind(addr: SocketAddr, reuse_port: bool) -> Result<std::net::TcpListener, Error> {
    use socket2::{Domain, Protocol, Socket, Type};
    let io = |what: &str| {
        let what = format!("{what} {addr}");
        move |source| Error::Io { what, source }
    };
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))
        .map_err(io("create a socket for"))?;
    s.set_reuse_address(true)
        .map_err(io("set SO_REUSEADDR on"))?;
    if reuse_port {
        s.set_reuse_port(true).map_err(io("set SO_REUSEPORT on"))?;
    }
    if addr.is_ipv6() {
        s.set_only_v6(true).map_err(io("set IPV6_V6ONLY on"))?;
    }
    s.bind(&addr.into()).map_err(io("bind"))?;
    s.listen(4096).map_err(io("listen on"))?;
    s.set_nonblocking(true).map_err(io("set O_NONBLOCK on"))?;
    Ok(s.into())
}

/// Raise this process's open-file limit: to 1,048,576 (or `fs.nr_open`) when privileged,
/// else the soft limit to the hard limit. Returns the new soft limit.
pub fn raise_fd_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own; no other preconditions.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut lim) } != 0 {
        return 0;
    }
    let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse::<libc::rlim_t>().ok())
        .unwrap_or(1 << 20)
        .min(1 << 20);
    for target in [nr_open.max(lim.rlim_max), lim.rlim_max] {
        if target <= lim.rlim_cur {
            break;
        }
        let want = libc::rlimit {
            rlim_cur: target,
            rlim_max: target,
        };
        // SAFETY: setrlimit reads the struct we own; failure leaves the old limit.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raw const want) } == 0 {
            return target;
        }
    }
    lim.rlim_cur
}

/// Accept one connection without registering it anywhere: non-blocking, close-on-exec.
fn accept_raw(lfd: i32) -> std::io::Result<(std::net::TcpStream, SocketAddr)> {
    use std::os::fd::FromRawFd;
    // SAFETY: an all-zero sockaddr_storage is a valid value.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = libc::socklen_t::try_from(std::mem::size_of::<libc::sockaddr_storage>())
        .unwrap_or(libc::socklen_t::MAX);
    // SAFETY: lfd is our listening socket; ss/len describe a buffer we own.
    let fd = unsafe {
        libc::accept4(
            lfd,
            (&raw mut ss).cast::<libc::sockaddr>(),
            &raw mut len,
            libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh connected socket that we now own.
    let stream = unsafe { std::net::TcpStream::from_raw_fd(fd) };
    let peer = match i32::from(ss.ss_family) {
        libc::AF_INET => {
            // SAFETY: the kernel filled a sockaddr_in for an AF_INET socket.
            let a = unsafe { *(&raw const ss).cast::<libc::sockaddr_in>() };
            SocketAddr::from((
                std::net::Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)),
                u16::from_be(a.sin_port),
            ))
        }
        libc::AF_INET6 => {
            // SAFETY: the kernel filled a sockaddr_in6 for an AF_INET6 socket.
            let a = unsafe { *(&raw const ss).cast::<libc::sockaddr_in6>() };
            SocketAddr::V6(std::net::SocketAddrV6::new(
                std::net::Ipv6Addr::from(a.sin6_addr.s6_addr),
                u16::from_be(a.sin6_port),
                a.sin6_flowinfo,
                a.sin6_scope_id,
            ))
        }
        _ => stream.peer_addr()?,
    };
    Ok((stream, peer))
}

/// What the client's first bytes, if any have arrived, say it speaks (MSG_PEEK: nothing is
/// consumed). `None` when nothing (or too little to tell) has arrived yet.
fn peek_protocol(stream: &std::net::TcpStream) -> Option<h2::Sniffed> {
    use std::os::fd::AsRawFd;
    let mut buf = [0u8; 24];
    // SAFETY: the buffer is ours and its length is passed; the descriptor is open.
    let n = unsafe {
        libc::recv(
            stream.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    if let Ok(n @ 1..) = usize::try_from(n) {
        return h2::sniff(&buf[..n.min(buf.len())]);
    }
    // End of input or an error: HTTP/1.x reports it as it always does.
    if n == 0 || std::io::Error::last_os_error().kind() != std::io::ErrorKind::WouldBlock {
        return Some(h2::Sniffed::Http1);
    }
    None
}

/// Start a plain connection on a `--http2` server: HTTP/2 or HTTP/1.x, by its first bytes.
fn start_plain(stream: std::net::TcpStream, ctl: Rc<Ctl>, sh: &Rc<Shared>) {
    match peek_protocol(&stream) {
        Some(h2::Sniffed::Http1) => start_http1(stream, &ctl, sh),
        Some(h2::Sniffed::Http2) => {
            let _ = stream.set_nodelay(true);
            match tokio::net::TcpStream::from_std(stream) {
                Ok(s) => {
                    tokio::task::spawn_local(h2::serve(s, ctl, sh.clone()));
                }
                Err(_) => {
                    sh.report(&ctl, Reason::IoError, "register", Ending::PeerGone);
                    sh.unregister(&ctl);
                }
            }
        }
        None => {
            tokio::task::spawn_local(wait_and_start(stream, ctl, sh.clone()));
        }
    }
}

/// A plain connection whose first bytes have not come yet: wait for enough to tell HTTP/2
/// from HTTP/1.x (the keep-alive timeout, as for an HTTP/1.x connection before its first
/// request), then start it.
async fn wait_and_start(stream: std::net::TcpStream, ctl: Rc<Ctl>, sh: Rc<Shared>) {
    let Ok(s) = tokio::net::TcpStream::from_std(stream) else {
        sh.report(&ctl, Reason::IoError, "register", Ending::PeerGone);
        sh.unregister(&ctl);
        return;
    };
    let wait = if sh.cfg().keepalive_timeout.is_zero() {
        sh.cfg().header_timeout
    } else {
        sh.cfg().keepalive_timeout
    };
    let deadline = Instant::now() + wait;
    let mut buf = [0u8; 3];
    let mut told = false;
    while Instant::now() < deadline {
        let peeked = tokio::time::timeout_at(deadline, s.peek(&mut buf)).await;
        match peeked {
            Ok(Ok(n)) if n == 0 || h2::sniff(&buf[..n]).is_some() => {
                told = true;
                break;
            }
            // One or two bytes of `PRI` so far: the rest is a packet away.
            Ok(Ok(_)) => tokio::time::sleep(Duration::from_millis(2)).await,
            Ok(Err(_)) => {
                told = true;
                break;
            }
            Err(_) => break,
        }
    }
    if !told {
        sh.report(&ctl, Reason::IdleTimeout, "", Ending::Fin);
        sh.unregister(&ctl);
        return;
    }
    match s.into_std() {
        Ok(std) => start_plain(std, ctl, &sh),
        Err(_) => {
            sh.report(&ctl, Reason::IoError, "register", Ending::PeerGone);
            sh.unregister(&ctl);
        }
    }
}

/// Start an HTTP/1.x connection: its first request is usually answered right here.
fn start_http1(stream: std::net::TcpStream, ctl: &Rc<Ctl>, sh: &Rc<Shared>) {
    if let Some((s, carry)) = conn::accepted(stream, ctl, sh) {
        park::spawn(s, ctl.clone(), sh.clone(), carry);
    }
}

async fn accept_loop(
    listener: std::net::TcpListener,
    sh: Rc<Shared>,
    tls: Option<tokio_rustls::TlsAcceptor>,
) {
    use std::os::fd::AsRawFd;
    // SAFETY: the AsyncFd owns the listener, so its descriptor stays open and the same for
    // the registration's life.
    let Ok(afd) = (unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(listener, tokio::io::Interest::READABLE)
    }) else {
        Stats::add(&sh.stats.accept_errors, 1);
        return;
    };
    loop {
        let Ok(mut guard) = afd.readable().await else {
            return;
        };
        let Ok(r) = guard.try_io(|l| accept_raw(l.get_ref().as_raw_fd())) else {
            continue;
        };
        match r {
            Ok((stream, peer)) => {
                let cap = sh.cfg().max_connections;
                let at_cap =
                    cap > 0 && usize::try_from(sh.stats.open.get()).unwrap_or(usize::MAX) >= cap;
                let victim = if at_cap { sh.oldest_idle() } else { None };
                if let Some(v) = &victim {
                    kill_conn(&sh, v, Reason::CapEviction);
                }
                if at_cap && victim.is_none() {
                    let ctl = sh.register(peer);
                    sh.report(&ctl, Reason::CapFull, "", Ending::Fin);
                    sh.unregister(&ctl);
                    drop(stream);
                    continue;
                }
                let ctl = sh.register(peer);
                if let Some(acceptor) = &tls {
                    tokio::task::spawn_local(tls::serve(stream, ctl, sh.clone(), acceptor.clone()));
                } else if sh.cfg().http2 {
                    start_plain(stream, ctl, &sh);
                } else {
                    start_http1(stream, &ctl, &sh);
                }
            }
            Err(e) => {
                Stats::add(&sh.stats.accept_errors, 1);
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
                ) {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
    }
}

/// Serve on `listeners` until SIGINT or SIGTERM, then drain and return.
///
/// `on_close` is called once per connection as it closes.
///
/// # Errors
/// [`Error::Io`] when the runtime, the listeners or the signal handlers cannot be set up.
pub fn run(
    cfg: Config,
    listeners: Vec<std::net::TcpListener>,
    on_close: impl FnMut(&CloseEvent) + 'static,
) -> Result<Summary, Error> {
    run_with_metrics(cfg, listeners, None, on_close)
}

/// As [`run`], also answering `GET /metrics` (the `/metrics` text of every listener) on
/// `metrics`, a listener that serves nothing else and is not counted as traffic.
///
/// # Errors
/// As [`run`].
pub fn run_with_metrics(
    cfg: Config,
    listeners: Vec<std::net::TcpListener>,
    metrics: Option<std::net::TcpListener>,
    on_close: impl FnMut(&CloseEvent) + 'static,
) -> Result<Summary, Error> {
    run_with(
        cfg,
        listeners,
        Extras {
            metrics,
            ..Extras::default()
        },
        on_close,
    )
}

/// The listeners beside the traffic under test.
#[derive(Default)]
pub struct Extras {
    /// Answers `GET /metrics` (the `/metrics` text of every listener).
    pub metrics: Option<std::net::TcpListener>,
    /// Answers `GET`/`PUT /config`: keep-alive settings changed while the server runs
    /// (see [`control`]).
    pub control: Option<std::net::TcpListener>,
    /// Called for each setting changed through `control`.
    pub on_change: Option<control::OnChange>,
}

/// As [`run`], with the listeners in `extras`.
///
/// # Errors
/// As [`run`].
pub fn run_with(
    cfg: Config,
    listeners: Vec<std::net::TcpListener>,
    extras: Extras,
    on_close: impl FnMut(&CloseEvent) + 'static,
) -> Result<Summary, Error> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| Error::Io {
            what: "start the server runtime".into(),
            source,
        })?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, serve(cfg, listeners, extras, Box::new(on_close)))
}

async fn serve(
    cfg: Config,
    listeners: Vec<std::net::TcpListener>,
    extras: Extras,
    on_close: Box<dyn FnMut(&CloseEvent)>,
) -> Result<Summary, Error> {
    use tokio::signal::unix::{signal, SignalKind};
    let sig = |k: SignalKind, name: &str| {
        signal(k).map_err(|source| Error::Io {
            what: format!("install a {name} handler"),
            source,
        })
    };
    let mut sigint = sig(SignalKind::interrupt(), "SIGINT")?;
    let mut sigterm = sig(SignalKind::terminate(), "SIGTERM")?;
    let drain = cfg.drain_timeout;
    let acceptor = match &cfg.tls {
        Some(files) => Some(tls::acceptor(files, cfg.http2)?),
        None => None,
    };
    let stats = Stats::default();
    let hub = push::store::Hub::new(
        cfg.store_limit,
        cfg.max_rooms,
        cfg.store.as_deref(),
        stats.rooms.clone(),
    )?;
    let lot = lot::Lot::new().map_err(|source| Error::Io {
        what: "create the idle connection epoll set".into(),
        source,
    })?;
    let sh = Rc::new(Shared::new(cfg, stats, hub, lot, on_close));
    let lot_task = tokio::task::spawn_local(park::run(sh.clone()));
    let sweep_task = tokio::task::spawn_local(park::sweep(sh.clone()));
    let mut accepts = Vec::new();
    for l in listeners {
        accepts.push(tokio::task::spawn_local(accept_loop(
            l,
            sh.clone(),
            acceptor.clone(),
        )));
    }
    if let Some(m) = extras.metrics {
        accepts.push(tokio::task::spawn_local(metrics::serve(m, sh.clone())));
    }
    if let Some(c) = extras.control {
        let on_change: Rc<dyn Fn(&ConfigChange)> = match extras.on_change {
            Some(f) => Rc::from(f),
            None => Rc::new(|_: &ConfigChange| {}),
        };
        accepts.push(tokio::task::spawn_local(control::serve(
            c,
            sh.clone(),
            on_change,
        )));
    }
    tokio::select! {
        _ = sigint.recv() => {}
        _ = sigterm.recv() => {}
    }
    sh.shutting_down.set(true);
    for a in &accepts {
        a.abort();
    }
    lot_task.abort();
    sweep_task.abort();
    let live: Vec<Rc<Ctl>> = sh.conns.borrow().iter().flatten().cloned().collect();
    for c in &live {
        kill_conn(&sh, c, Reason::Shutdown);
    }
    drop(live);
    let deadline = Instant::now() + drain;
    while sh.stats.open.get() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let left: Vec<Rc<Ctl>> = sh.conns.borrow().iter().flatten().cloned().collect();
    for c in &left {
        sh.report(c, Reason::Shutdown, "drain timeout", Ending::Rst);
    }
    let summary = Summary {
        connections: sh.stats.accepted.get(),
        requests: sh.stats.requests.get(),
        cut_at_drain: left.len() as u64,
    };
    drop(left);
    // Tasks still holding the shared state are dropped with the runtime; the store writer
    // finishes what was queued when the hub is dropped.
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parked_connection_state_stays_small() {
        // A parked connection is its registry entry and little else; the idle-memory budget
        // (below nginx's ~526 B per idle connection) depends on it.
        assert!(
            std::mem::size_of::<Ctl>() <= 160,
            "{}",
            std::mem::size_of::<Ctl>()
        );
    }

    #[test]
    fn every_reason_has_a_distinct_name_and_index() {
        for (i, r) in Reason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i);
        }
        let mut names: Vec<_> = Reason::ALL.iter().map(|r| r.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), Reason::ALL.len());
    }
}
