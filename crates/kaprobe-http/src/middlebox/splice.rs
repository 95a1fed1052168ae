//! The relay without latency. A burst starts with one recv(2) into a per-thread buffer: a
//! short read means the socket is drained, which is all a small message (a request, a
//! response head) needs, passed on with one send(2). A full buffer means more is waiting:
//! the rest of the burst moves through a pipe with splice(2), never copied into user space
//! (the pages a socket received are handed on to the other socket). A connection takes a
//! pipe from a small per-thread pool only while bytes are in flight and gives it back once
//! the pipe is empty; bytes a receiver cannot take yet wait in a buffer of the connection's
//! own, freed once delivered: an idle connection holds no pipe and no buffer.
//!
//! Each direction is a loop that runs until it would block; the idle timer is one sleep that
//! is moved only when it fires early, so a busy connection sets no timer per chunk.

use std::cell::RefCell;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::io::Interest;
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::{Config, Ending, OnIdle, Stats};

/// The pipe size asked for: how much one splice moves at most.
const PIPE_SIZE: libc::c_int = 256 * 1024;
/// Empty pipes kept per thread for the next chunk.
const POOL_MAX: usize = 32;
/// The per-thread buffer that starts each burst; a read that fills it goes on by splice.
const FIRST_READ: usize = 16 * 1024;

/// A pipe: its read end, its write end, and its capacity in bytes.
struct Pipe {
    r: OwnedFd,
    w: OwnedFd,
    size: usize,
}

impl Pipe {
    fn new() -> io::Result<Self> {
        let mut fds = [0 as RawFd; 2];
        // SAFETY: pipe2 writes two descriptors into the array it is given.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: both descriptors were just returned by pipe2 and are owned by nobody else.
        let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // A larger pipe moves more per call; the kernel may refuse (per-user pipe limits),
        // then the default (64 KiB) serves.
        // SAFETY: fcntl on a descriptor we own; F_SETPIPE_SZ and F_GETPIPE_SZ take an int.
        let size = unsafe {
            libc::fcntl(w.as_raw_fd(), libc::F_SETPIPE_SZ, PIPE_SIZE);
            libc::fcntl(w.as_raw_fd(), libc::F_GETPIPE_SZ)
        };
        let size = usize::try_from(size).unwrap_or(0).max(4096);
        Ok(Self { r, w, size })
    }
}

thread_local! {
    static POOL: RefCell<Vec<Pipe>> = const { RefCell::new(Vec::new()) };
    static FIRST: RefCell<Vec<u8>> = RefCell::new(vec![0; FIRST_READ]);
}

/// recv(2) into `buf`.
fn recv(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for writes of its length.
    let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}

/// send(2) of `buf` (no SIGPIPE: a reset receiver is an error).
fn send(fd: RawFd, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for reads of its length.
    let n = unsafe { libc::send(fd, buf.as_ptr().cast(), buf.len(), libc::MSG_NOSIGNAL) };
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}

fn take_pipe() -> io::Result<Pipe> {
    match POOL.with(|p| p.borrow_mut().pop()) {
        Some(p) => Ok(p),
        None => Pipe::new(),
    }
}

/// Give back an empty pipe.
fn give_back(pipe: Pipe) {
    POOL.with(|p| {
        let mut p = p.borrow_mut();
        if p.len() < POOL_MAX {
            p.push(pipe);
        }
    });
}

/// Move up to `len` bytes from `from` to `to`, one of them a pipe.
fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
    // SAFETY: splice between two open descriptors with no offsets (sockets and pipes).
    let n = unsafe {
        libc::splice(
            from,
            std::ptr::null_mut(),
            to,
            std::ptr::null_mut(),
            len,
            libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
        )
    };
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}

/// One direction's bytes in flight: a pipe while it holds any, and bytes read by recv that
/// the receiver has not taken yet.
#[derive(Default)]
struct Lane {
    pipe: Option<Pipe>,
    pending: usize,
    held: Vec<u8>,
    /// The burst's first read filled the buffer: splice until the socket is drained.
    bulk: bool,
}

impl Lane {
    fn in_flight(&self) -> bool {
        self.pending > 0 || !self.held.is_empty()
    }
}

/// What a burst's first read did.
enum First {
    /// Bytes read (and passed on, or held).
    Got,
    /// Nothing there after all.
    Nothing,
    Eof,
    ReadFailed,
    WriteFailed,
}

/// Why a direction stopped.
enum Stop {
    /// Its sender closed (FIN); everything before it was delivered.
    Eof,
    /// Reading failed (the sender reset).
    ReadFailed,
    /// Writing failed (the receiver reset).
    WriteFailed,
    /// The idle timer had expired and the sender sent again (`rst-on-next`).
    Next,
    /// No pipe could be made (out of descriptors).
    NoPipe(io::Error),
}

/// Counters one direction adds to (atomics only so that the future stays `Send`: both
/// directions run in the same task).
struct Count<'a> {
    mine: &'a AtomicU64,
    total: &'a AtomicU64,
    /// The latest payload byte either way, in nanoseconds since `base`.
    last: &'a AtomicU64,
    base: Instant,
}

fn nanos_since(base: Instant) -> u64 {
    u64::try_from(base.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// Relay `from` to `to` until the sender closes or something fails. Between awaits every
/// state change is made in the same poll as the splice that caused it, so dropping this
/// future at an await loses nothing.
async fn pump(
    lane: &mut Lane,
    from: &TcpStream,
    to: &TcpStream,
    c: &Count<'_>,
    expired: bool,
) -> Stop {
    loop {
        while lane.pending > 0 {
            let Some(pipe) = &lane.pipe else {
                lane.pending = 0;
                break;
            };
            let (r, pending) = (pipe.r.as_raw_fd(), lane.pending);
            match to
                .async_io(Interest::WRITABLE, || splice(r, to.as_raw_fd(), pending))
                .await
            {
                Ok(n) => lane.pending -= n.min(lane.pending),
                Err(_) => return Stop::WriteFailed,
            }
        }
        if let Some(p) = lane.pipe.take() {
            give_back(p);
        }
        while !lane.held.is_empty() {
            let held = &lane.held;
            match to
                .async_io(Interest::WRITABLE, || send(to.as_raw_fd(), held))
                .await
            {
                Ok(n) => drop(lane.held.drain(..n.min(lane.held.len()))),
                Err(_) => return Stop::WriteFailed,
            }
            if lane.held.is_empty() {
                // Delivered: the connection keeps no buffer.
                lane.held = Vec::new();
            }
        }
        if expired {
            // Whatever comes next (data or FIN) is answered with a RST.
            let mut b = [0u8; 1];
            return match from.peek(&mut b).await {
                Ok(_) => Stop::Next,
                Err(_) => Stop::ReadFailed,
            };
        }
        if from.readable().await.is_err() {
            return Stop::ReadFailed;
        }
        if !lane.bulk {
            match first_read(lane, from, to, c) {
                First::Got | First::Nothing => continue,
                First::Eof => return Stop::Eof,
                First::ReadFailed => return Stop::ReadFailed,
                First::WriteFailed => return Stop::WriteFailed,
            }
        }
        let pipe = match take_pipe() {
            Ok(p) => p,
            Err(e) => return Stop::NoPipe(e),
        };
        let (w, size) = (pipe.w.as_raw_fd(), pipe.size);
        match from.try_io(Interest::READABLE, || splice(from.as_raw_fd(), w, size)) {
            Ok(0) => {
                give_back(pipe);
                return Stop::Eof;
            }
            Ok(n) => {
                lane.pending = n;
                lane.pipe = Some(pipe);
                count(c, n);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                // Drained: the next burst starts with a read again.
                lane.bulk = false;
                give_back(pipe);
            }
            Err(_) => {
                give_back(pipe);
                return Stop::ReadFailed;
            }
        }
    }
}

fn count(c: &Count<'_>, n: usize) {
    c.last.store(nanos_since(c.base), Ordering::Relaxed);
    c.mine.fetch_add(n as u64, Ordering::Relaxed);
    c.total.fetch_add(n as u64, Ordering::Relaxed);
}

/// A burst's first read: recv into the thread's buffer and send on what was read.
fn first_read(lane: &mut Lane, from: &TcpStream, to: &TcpStream, c: &Count<'_>) -> First {
    FIRST.with(|buf| {
        let mut buf = buf.borrow_mut();
        let mut short = None;
        let r = from.try_io(Interest::READABLE, || {
            let n = recv(from.as_raw_fd(), &mut buf)?;
            if n > 0 && n < buf.len() {
                // A short read drained the socket. Saying WouldBlock clears the readiness
                // seen before this read only: data that arrived since has marked the socket
                // ready again, and it is not cleared. This saves the read that would find
                // nothing.
                short = Some(n);
                return Err(io::ErrorKind::WouldBlock.into());
            }
            Ok(n)
        });
        let n = match (r, short) {
            (_, Some(n)) => n,
            (Ok(0), None) => return First::Eof,
            (Ok(n), None) => {
                // The buffer is full: more may wait, the rest goes by splice.
                lane.bulk = true;
                n
            }
            (Err(e), None) if e.kind() == io::ErrorKind::WouldBlock => return First::Nothing,
            (Err(_), None) => return First::ReadFailed,
        };
        count(c, n);
        match to.try_io(Interest::WRITABLE, || send(to.as_raw_fd(), &buf[..n])) {
            Ok(m) if m >= n => {}
            Ok(m) => lane.held.extend_from_slice(&buf[m..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                lane.held.extend_from_slice(&buf[..n]);
            }
            Err(_) => return First::WriteFailed,
        }
        First::Got
    })
}

/// What the spliced relay ended with.
pub(super) struct Spliced {
    pub ending: Ending,
    /// The latest payload byte either way.
    pub last: Instant,
    pub bytes_up: u64,
    pub bytes_down: u64,
    /// Why a pipe could not be made, when that ended it.
    pub error: Option<String>,
}

/// Relay `client` and `upstream` both ways until one of them ends the connection, the idle
/// timer does what `cfg.on_idle` says, or the middlebox stops.
pub(super) async fn relay(
    client: &TcpStream,
    upstream: &TcpStream,
    cfg: &Config,
    stats: &Stats,
    shutdown: &mut tokio::sync::watch::Receiver<bool>,
) -> Spliced {
    let base = Instant::now();
    let last_ns = AtomicU64::new(0);
    let last = || base + std::time::Duration::from_nanos(last_ns.load(Ordering::Relaxed));
    let (up_bytes, down_bytes) = (AtomicU64::new(0), AtomicU64::new(0));
    let up_count = Count {
        mine: &up_bytes,
        total: &stats.bytes_up,
        last: &last_ns,
        base,
    };
    let down_count = Count {
        mine: &down_bytes,
        total: &stats.bytes_down,
        last: &last_ns,
        base,
    };
    let (mut up, mut down) = (Lane::default(), Lane::default());
    // Each direction's sender has closed (and its FIN was passed on).
    let mut eof = [false; 2];
    let mut first_fin_from_client = true;
    let mut expired = false;
    let mut error = None;
    let idle = tokio::time::sleep_until(last() + cfg.idle);
    tokio::pin!(idle);
    let ending = loop {
        if *shutdown.borrow() {
            break Ending::Shutdown;
        }
        if eof[0] && eof[1] {
            break if first_fin_from_client {
                Ending::ClientFin
            } else {
                Ending::UpstreamFin
            };
        }
        tokio::select! {
            _ = shutdown.changed() => break Ending::Shutdown,
            s = pump(&mut up, client, upstream, &up_count, expired), if !eof[0] => match s {
                Stop::Eof => {
                    if !eof[1] {
                        first_fin_from_client = true;
                    }
                    eof[0] = true;
                    let _ = socket2::SockRef::from(upstream).shutdown(std::net::Shutdown::Write);
                }
                Stop::ReadFailed => break Ending::ClientRst,
                Stop::WriteFailed => break Ending::UpstreamRst,
                Stop::Next => break Ending::RstOnNext,
                Stop::NoPipe(e) => {
                    error = Some(format!("make a pipe: {}", kaprobe_sock::fmt::os_error(&e)));
                    break Ending::ClientRst;
                }
            },
            s = pump(&mut down, upstream, client, &down_count, expired), if !eof[1] => match s {
                Stop::Eof => {
                    if !eof[0] {
                        first_fin_from_client = false;
                    }
                    eof[1] = true;
                    let _ = socket2::SockRef::from(client).shutdown(std::net::Shutdown::Write);
                }
                Stop::ReadFailed => break Ending::UpstreamRst,
                Stop::WriteFailed => break Ending::ClientRst,
                Stop::Next => break Ending::RstOnNext,
                Stop::NoPipe(e) => {
                    error = Some(format!("make a pipe: {}", kaprobe_sock::fmt::os_error(&e)));
                    break Ending::UpstreamRst;
                }
            },
            () = idle.as_mut(), if !expired => {
                let due = last() + cfg.idle;
                if up.in_flight() || down.in_flight() {
                    // Bytes still in flight count as activity.
                    last_ns.store(nanos_since(base), Ordering::Relaxed);
                    idle.as_mut().reset(last() + cfg.idle);
                } else if due > Instant::now() {
                    // Activity since the timer was set: wait for the new limit.
                    idle.as_mut().reset(due);
                } else {
                    match cfg.on_idle {
                        OnIdle::Fin => break Ending::IdleFin,
                        OnIdle::Rst => break Ending::IdleRst,
                        OnIdle::Silent => break Ending::IdleSilent,
                        OnIdle::RstOnNext => expired = true,
                    }
                }
            }
        }
    };
    for lane in [&mut up, &mut down] {
        if let Some(p) = lane.pipe.take() {
            // Bytes left in it are dropped with it; an empty pipe goes back to the pool.
            if lane.pending == 0 {
                give_back(p);
            }
        }
    }
    Spliced {
        ending,
        last: last(),
        bytes_up: up_bytes.load(Ordering::Relaxed),
        bytes_down: down_bytes.load(Ordering::Relaxed),
        error,
    }
}
