//! The keep-alive server behind `kaprobe serve`.
//!
//! One tokio current-thread runtime runs every connection as a local task. Each connection's
//! protocol logic is the I/O-free state machine in [`proto`]; [`conn`] drives it over a socket
//! with the idle and header timers, the soft close and the RST close. Nothing here prints:
//! every closed connection is reported to the caller as a [`CloseEvent`].

pub mod conn;
pub mod date;
mod metrics;
pub mod park;
pub mod parse;
pub mod proto;
pub mod session;
pub mod stats;

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::rc::Rc;
use std::task::Waker;
use std::time::Duration;

use tokio::time::Instant;

use crate::Error;
pub use stats::Stats;

/// When to send the `Keep-Alive: timeout=N, max=M` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Advertise {
    Always,
    /// Only when the request sent `Connection: keep-alive` or a `Keep-Alive` field.
    WhenAsked,
    Never,
}

/// How an idle connection is ended when its keep-alive timeout fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseStyle {
    /// Half-close (FIN), drain briefly, close.
    Fin,
    /// Abortive close (SO_LINGER 0): the peer sees RST.
    Rst,
}

impl CloseStyle {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Fin => "fin",
            Self::Rst => "rst",
        }
    }
}

/// Server settings (see `kaprobe serve --help`).
#[derive(Debug, Clone)]
pub struct Config {
    /// Idle time after a response before the connection is closed (0: no keep-alive).
    pub keepalive_timeout: Duration,
    /// Requests per connection; the last response says `Connection: close` (0: unlimited).
    pub max_requests: u64,
    pub advertise: Advertise,
    /// Announce this timeout in `Keep-Alive` instead of the real one.
    pub advertise_timeout: Option<Duration>,
    /// Time allowed for a started request head to complete (and for each body read).
    pub header_timeout: Duration,
    pub close_style: CloseStyle,
    /// Connection cap (0: none). At the cap the oldest idle connection is closed.
    pub max_connections: usize,
    pub max_header_bytes: usize,
    pub max_body_bytes: u64,
    /// On SIGINT/SIGTERM, how long in-flight requests get before the server exits.
    pub drain_timeout: Duration,
    /// After a half-close, how long to read and discard what the client still sends.
    pub linger: Duration,
    /// Server ping interval on WebSocket connections (zero: off).
    pub ws_ping: Duration,
    /// Heartbeat comment interval on event streams (zero: off).
    pub sse_heartbeat: Duration,
    /// Largest WebSocket message (and frame) accepted; larger ones get close 1009.
    pub ws_max_message: usize,
    /// Messages kept in memory per room.
    pub store_limit: usize,
    /// SQLite file keeping every published message (None: memory only).
    pub store: Option<std::path::PathBuf>,
    /// Push rooms in memory at most; a request for a new room beyond it gets 503.
    pub max_rooms: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            keepalive_timeout: Duration::from_secs(5),
            max_requests: 100,
            advertise: Advertise::Always,
            advertise_timeout: None,
            header_timeout: Duration::from_secs(10),
            close_style: CloseStyle::Fin,
            max_connections: 0,
            max_header_bytes: 8192,
            max_body_bytes: 10 << 20,
            drain_timeout: Duration::from_secs(5),
            linger: Duration::from_secs(1),
            ws_ping: Duration::ZERO,
            sse_heartbeat: Duration::ZERO,
            ws_max_message: 1 << 20,
            store_limit: 10_000,
            store: None,
            max_rooms: 10_000,
        }
    }
}

/// Why a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    IdleTimeout,
    MaxRequests,
    ClientCloseHeader,
    Http10,
    ClientFin,
    ClientRst,
    HeaderTimeout,
    BadRequest,
    Shutdown,
    CapEviction,
    /// `/close` asked for it.
    CloseEndpoint,
    /// Refused at the connection cap with no idle connection to evict.
    CapFull,
    /// The client stopped reading our response.
    SendTimeout,
    /// Another socket error.
    IoError,
    /// The WebSocket client sent a close frame.
    WsClientClose,
    /// The WebSocket client's TCP connection ended without a close frame.
    WsClientGone,
    /// No pong came back within one ping interval (close 1001).
    WsPongTimeout,
    /// A malformed frame (close 1002).
    WsProtocolError,
    /// A text message that is not UTF-8 (close 1007).
    WsInvalidUtf8,
    /// A message larger than --ws-max-message (close 1009).
    WsMessageTooBig,
    /// The event-stream client went away.
    SseClientGone,
    /// A push request for a new room was refused with 503 at --max-rooms.
    RoomLimit,
    /// `--keepalive-timeout 0`: every response says `Connection: close`.
    KeepAliveOff,
}

impl Reason {
    pub const ALL: [Reason; 23] = [
        Self::IdleTimeout,
        Self::MaxRequests,
        Self::ClientCloseHeader,
        Self::Http10,
        Self::ClientFin,
        Self::ClientRst,
        Self::HeaderTimeout,
        Self::BadRequest,
        Self::Shutdown,
        Self::CapEviction,
        Self::CloseEndpoint,
        Self::CapFull,
        Self::SendTimeout,
        Self::IoError,
        Self::WsClientClose,
        Self::WsClientGone,
        Self::WsPongTimeout,
        Self::WsProtocolError,
        Self::WsInvalidUtf8,
        Self::WsMessageTooBig,
        Self::SseClientGone,
        Self::RoomLimit,
        Self::KeepAliveOff,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::IdleTimeout => "idle_timeout",
            Self::MaxRequests => "max_requests",
            Self::ClientCloseHeader => "client_close_header",
            Self::Http10 => "http10",
            Self::ClientFin => "client_fin",
            Self::ClientRst => "client_rst",
            Self::HeaderTimeout => "header_timeout",
            Self::BadRequest => "bad_request",
            Self::Shutdown => "shutdown",
            Self::CapEviction => "cap_eviction",
            Self::CloseEndpoint => "close_endpoint",
            Self::CapFull => "cap_full",
            Self::SendTimeout => "send_timeout",
            Self::IoError => "io_error",
            Self::WsClientClose => "ws_client_close",
            Self::WsClientGone => "ws_client_gone",
            Self::WsPongTimeout => "ws_pong_timeout",
            Self::WsProtocolError => "ws_protocol_error",
            Self::WsInvalidUtf8 => "ws_invalid_utf8",
            Self::WsMessageTooBig => "ws_message_too_big",
            Self::SseClientGone => "sse_client_gone",
            Self::RoomLimit => "room_limit",
            Self::KeepAliveOff => "keepalive_off",
        }
    }
}

/// How the server ended its side of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// FIN after the last response, then a brief drain.
    Fin,
    /// RST (SO_LINGER 0).
    Rst,
    /// The peer had already gone; the socket was simply closed.
    PeerGone,
}

impl Ending {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Fin => "fin",
            Self::Rst => "rst",
            Self::PeerGone => "peer_gone",
        }
    }
}

/// One connection's end, reported as it happens.
#[derive(Debug, Clone)]
pub struct CloseEvent {
    pub peer: SocketAddr,
    pub reason: Reason,
    /// More about the reason (which rule a bad request broke), or empty.
    pub detail: &'static str,
    /// Responses sent on the connection.
    pub requests: u64,
    /// From accept to the close.
    pub lifetime: Duration,
    pub ending: Ending,
}

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

/// A connection's entry in the registry: what eviction, shutdown and logging need.
pub(crate) struct Ctl {
    slot: Cell<u32>,
    pub(crate) peer: SocketAddr,
    pub(crate) start: Instant,
    /// Non-zero while idle: the order in which it went idle.
    idle_seq: Cell<u64>,
    kill: Cell<Option<Reason>>,
    waker: Cell<Option<Waker>>,
    pub(crate) served: Cell<u64>,
    logged: Cell<bool>,
    /// Set while the connection waits in the parking lot (no task).
    pub(crate) parked: RefCell<Option<std::net::TcpStream>>,
    pub(crate) park_seq: Cell<u64>,
    pub(crate) idle_since: Cell<Instant>,
    park_req: Cell<bool>,
}

impl Ctl {
    /// Ask the connection's task to close (it only listens while idle).
    fn kill(&self, r: Reason) {
        if self.kill.get().is_none() {
            self.kill.set(Some(r));
        }
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }

    /// Remember the task to wake for a kill or a park request.
    pub(crate) fn register(&self, w: &Waker) {
        match self.waker.take() {
            Some(old) if old.will_wake(w) => self.waker.set(Some(old)),
            _ => self.waker.set(Some(w.clone())),
        }
    }

    /// Why the task was woken, if by us: a kill reason, or a request to park.
    pub(crate) fn signal(&self) -> Option<Signal> {
        if let Some(r) = self.kill.get() {
            return Some(Signal::Kill(r));
        }
        self.park_req.replace(false).then_some(Signal::Park)
    }

    fn request_park(&self) {
        self.park_req.set(true);
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }
}

/// What the server asks of an idle connection's task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Signal {
    Kill(Reason),
    Park,
}

/// State shared by every task of one server.
pub(crate) struct Shared {
    pub(crate) cfg: Config,
    pub(crate) stats: Stats,
    pub(crate) shutting_down: Cell<bool>,
    pub(crate) conns: RefCell<Vec<Option<Rc<Ctl>>>>,
    pub(crate) lot: park::Lot,
    pub(crate) hub: crate::push::store::Hub,
    free: RefCell<Vec<u32>>,
    idle_order: RefCell<VecDeque<(u64, u32)>>,
    next_seq: Cell<u64>,
    #[allow(clippy::type_complexity)]
    on_close: RefCell<Box<dyn FnMut(&CloseEvent)>>,
}

impl Shared {
    fn register(&self, peer: SocketAddr) -> Rc<Ctl> {
        let ctl = Rc::new(Ctl {
            slot: Cell::new(0),
            peer,
            start: Instant::now(),
            idle_seq: Cell::new(0),
            kill: Cell::new(None),
            waker: Cell::new(None),
            served: Cell::new(0),
            logged: Cell::new(false),
            parked: RefCell::new(None),
            park_seq: Cell::new(0),
            idle_since: Cell::new(Instant::now()),
            park_req: Cell::new(false),
        });
        let mut conns = self.conns.borrow_mut();
        let slot = if let Some(s) = self.free.borrow_mut().pop() {
            conns[s as usize] = Some(ctl.clone());
            s
        } else {
            conns.push(Some(ctl.clone()));
            u32::try_from(conns.len() - 1).unwrap_or(u32::MAX)
        };
        ctl.slot.set(slot);
        Stats::add(&self.stats.open, 1);
        Stats::add(&self.stats.accepted, 1);
        ctl
    }

    pub(crate) fn unregister(&self, ctl: &Ctl) {
        self.set_busy(ctl);
        let slot = ctl.slot.get();
        if let Some(e) = self.conns.borrow_mut().get_mut(slot as usize) {
            *e = None;
            self.free.borrow_mut().push(slot);
        }
        Stats::add(&self.stats.open, -1);
    }

    /// True when idle connections are parked (the idle timeout is longer than the park delay).
    pub(crate) fn parking(&self) -> bool {
        self.cfg.keepalive_timeout > park::PARK_AFTER
    }

    pub(crate) fn set_idle(&self, ctl: &Ctl, since: Instant) {
        if ctl.idle_seq.get() != 0 {
            return;
        }
        let seq = self.next_seq.get() + 1;
        self.next_seq.set(seq);
        ctl.idle_seq.set(seq);
        ctl.idle_since.set(since);
        Stats::add(&self.stats.idle, 1);
        if self.parking() {
            let mut hot = self.lot.hot.borrow_mut();
            // Park time from now (not from `since`): a connection just back from the lot
            // must first get to see the input that woke it.
            hot.push_back((seq, ctl.slot.get(), Instant::now() + park::PARK_AFTER));
            if hot.len() == 1 {
                self.lot.hot_notify.notify_one();
            }
        }
        if self.cfg.max_connections > 0 {
            let mut q = self.idle_order.borrow_mut();
            q.push_back((seq, ctl.slot.get()));
            if q.len() > 2 * self.cfg.max_connections + 1024 {
                let conns = self.conns.borrow();
                q.retain(|(s, slot)| {
                    conns
                        .get(*slot as usize)
                        .and_then(Option::as_ref)
                        .is_some_and(|c| c.idle_seq.get() == *s)
                });
            }
        }
    }

    pub(crate) fn set_busy(&self, ctl: &Ctl) {
        ctl.park_req.set(false);
        if ctl.idle_seq.get() != 0 {
            ctl.idle_seq.set(0);
            Stats::add(&self.stats.idle, -1);
        }
    }

    /// The connection that has been idle longest, if any.
    fn oldest_idle(&self) -> Option<Rc<Ctl>> {
        let conns = self.conns.borrow();
        let mut q = self.idle_order.borrow_mut();
        while let Some((seq, slot)) = q.pop_front() {
            if let Some(c) = conns.get(slot as usize).and_then(Option::as_ref) {
                if c.idle_seq.get() == seq && c.kill.get().is_none() {
                    return Some(c.clone());
                }
            }
        }
        None
    }

    pub(crate) fn report(&self, ctl: &Ctl, reason: Reason, detail: &'static str, ending: Ending) {
        if ctl.logged.replace(true) {
            return;
        }
        self.stats.closed(reason);
        let ev = CloseEvent {
            peer: ctl.peer,
            reason,
            detail,
            requests: ctl.served.get(),
            lifetime: ctl.start.elapsed(),
            ending,
        };
        (self.on_close.borrow_mut())(&ev);
    }
}

/// Ask a connection to close for `r`: parked ones are woken into a task to do it.
pub(crate) fn kill_conn(sh: &Rc<Shared>, ctl: &Rc<Ctl>, r: Reason) {
    if !park::unpark(sh, ctl, Some(r)) {
        ctl.kill(r);
    }
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

async fn accept_loop(listener: std::net::TcpListener, sh: Rc<Shared>) {
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
                let cap = sh.cfg.max_connections;
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
                conn::accepted(stream, ctl, &sh);
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
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| Error::Io {
            what: "start the server runtime".into(),
            source,
        })?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, serve(cfg, listeners, metrics, Box::new(on_close)))
}

async fn serve(
    cfg: Config,
    listeners: Vec<std::net::TcpListener>,
    metrics: Option<std::net::TcpListener>,
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
    let stats = Stats::default();
    let hub = crate::push::store::Hub::new(
        cfg.store_limit,
        cfg.max_rooms,
        cfg.store.as_deref(),
        stats.rooms.clone(),
    )?;
    let sh = Rc::new(Shared {
        hub,
        cfg,
        stats,
        shutting_down: Cell::new(false),
        conns: RefCell::new(Vec::new()),
        lot: park::Lot::new().map_err(|source| Error::Io {
            what: "create the idle connection epoll set".into(),
            source,
        })?,
        free: RefCell::new(Vec::new()),
        idle_order: RefCell::new(VecDeque::new()),
        next_seq: Cell::new(0),
        on_close: RefCell::new(on_close),
    });
    let lot_task = tokio::task::spawn_local(park::run(sh.clone()));
    let sweep_task = tokio::task::spawn_local(park::sweep(sh.clone()));
    let mut accepts = Vec::new();
    for l in listeners {
        accepts.push(tokio::task::spawn_local(accept_loop(l, sh.clone())));
    }
    if let Some(m) = metrics {
        accepts.push(tokio::task::spawn_local(metrics::serve(m, sh.clone())));
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
