//! The connection as the `h2` crate sees it, watched frame by frame with [`h2wire::Scanner`]:
//! what the client sends (PINGs for the PING policy, GOAWAY, the preface) and what the server
//! writes (GOAWAYs, and where frames end, so a raw frame can be added between two of them).
//!
//! The `h2` crate owns an [`Io`]; the connection task keeps the same [`Wire`] through an `Rc`,
//! so it can read what was seen and take the socket back when the crate is done with it.

use std::cell::{Cell, RefCell};
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::h2wire::{Frame, Scanner};
use crate::server::shared::Shared;
use crate::server::stats::Stats;

/// The PING policy (RFC 9113 leaves it to the server; this is gRPC core's rule, see
/// docs/serve.md): a PING that comes sooner than `min_interval` after the previous one while no
/// stream is open is a strike; more than `max_strikes` strikes (0: no limit) end the connection.
/// Strikes (and the previous PING's time) are forgotten whenever the server sends HEADERS or
/// DATA.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PingPolicy {
    pub min_interval: Duration,
    pub max_strikes: u32,
}

impl PingPolicy {
    fn on(self) -> bool {
        !self.min_interval.is_zero()
    }
}

/// What was seen on one connection, and the connection itself.
pub(crate) struct Wire<T> {
    io: RefCell<T>,
    rx: RefCell<Scanner>,
    tx: RefCell<Scanner>,
    frames: RefCell<Vec<Frame>>,
    policy: PingPolicy,
    sh: Rc<Shared>,
    /// Streams open now (kept by the connection task).
    pub open: Cell<usize>,
    last_ping: Cell<Option<Instant>>,
    strikes: Cell<u32>,
    /// The strike limit was passed.
    pub calm: Cell<bool>,
    /// Woken when `calm` or `malformed` is set.
    pub notify: Notify,
    /// The client's GOAWAY error code, once one came.
    pub client_goaway: Cell<Option<u32>>,
    /// The last GOAWAY the server wrote: (last stream id, error code), and how many.
    pub goaway_out: Cell<Option<(u32, u32)>>,
    pub goaways_out: Cell<u32>,
    /// A frame with a fixed-size payload of the wrong size in the client's bytes (RFC 9113
    /// calls that a FRAME_SIZE_ERROR; `h2` would say PROTOCOL_ERROR). Its bytes, and all
    /// after them, are kept from `h2`, and `notify` is woken.
    pub malformed: Cell<Option<&'static str>>,
}

impl<T> Wire<T> {
    pub(crate) fn new(io: T, policy: PingPolicy, sh: Rc<Shared>) -> Rc<Self> {
        Rc::new(Self {
            io: RefCell::new(io),
            rx: RefCell::new(Scanner::client_to_server()),
            tx: RefCell::new(Scanner::server_to_client()),
            frames: RefCell::new(Vec::new()),
            policy,
            sh,
            open: Cell::new(0),
            last_ping: Cell::new(None),
            strikes: Cell::new(0),
            calm: Cell::new(false),
            notify: Notify::new(),
            client_goaway: Cell::new(None),
            goaway_out: Cell::new(None),
            goaways_out: Cell::new(0),
            malformed: Cell::new(None),
        })
    }

    /// The client's first bytes were not the HTTP/2 preface.
    pub(crate) fn bad_preface(&self) -> bool {
        self.rx.borrow().lost()
    }

    /// Every byte written so far ends a whole frame: a raw frame may follow.
    pub(crate) fn at_frame_boundary(&self) -> bool {
        self.tx.borrow().at_frame_boundary()
    }

    /// The connection back, once the `h2` crate has let go of it.
    pub(crate) fn into_io(self) -> T {
        self.io.into_inner()
    }

    fn seen_in(&self, bytes: &[u8]) {
        let mut frames = self.frames.borrow_mut();
        self.rx.borrow_mut().feed(bytes, &mut frames);
        for f in frames.drain(..) {
            match f {
                Frame::Ping { ack: false, .. } => self.ping(),
                Frame::GoAway { code, .. } => self.client_goaway.set(Some(code)),
                Frame::Malformed { what, .. } => self.malformed.set(Some(what)),
                _ => {}
            }
        }
    }

    fn ping(&self) {
        Stats::add(&self.sh.stats.h2_pings, 1);
        let now = Instant::now();
        let last = self.last_ping.replace(Some(now));
        if !self.policy.on() || self.open.get() > 0 {
            return;
        }
        if last.is_some_and(|t| now.duration_since(t) < self.policy.min_interval) {
            Stats::add(&self.sh.stats.h2_ping_strikes, 1);
            let n = self.strikes.get() + 1;
            self.strikes.set(n);
            if self.policy.max_strikes > 0 && n > self.policy.max_strikes && !self.calm.get() {
                self.calm.set(true);
                self.notify.notify_one();
            }
        }
    }

    fn seen_out(&self, bytes: &[u8]) {
        let mut frames = self.frames.borrow_mut();
        self.tx.borrow_mut().feed(bytes, &mut frames);
        for f in frames.drain(..) {
            match f {
                Frame::Headers { .. } | Frame::Data { .. } => {
                    self.strikes.set(0);
                    self.last_ping.set(None);
                }
                Frame::GoAway {
                    last_stream, code, ..
                } => self.sent_goaway(last_stream, code),
                _ => {}
            }
        }
    }

    /// Count a GOAWAY the server sent (by `h2` or raw).
    pub(crate) fn sent_goaway(&self, last_stream: u32, code: u32) {
        Stats::add(&self.sh.stats.h2_goaways_sent, 1);
        self.goaway_out.set(Some((last_stream, code)));
        self.goaways_out.set(self.goaways_out.get() + 1);
    }

    /// Record raw bytes written past `h2` so the write scanner stays in step.
    pub(crate) fn wrote_raw(&self, bytes: &[u8]) {
        let mut frames = self.frames.borrow_mut();
        self.tx.borrow_mut().feed(bytes, &mut frames);
        frames.clear();
    }
}

/// The `h2` crate's handle on a [`Wire`].
pub(crate) struct Io<T>(pub Rc<Wire<T>>);

impl<T: AsyncRead + Unpin> AsyncRead for Io<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let w = &self.0;
        if w.malformed.get().is_some() {
            // The connection task answers it; `h2` reads nothing more.
            return Poll::Pending;
        }
        let before = buf.filled().len();
        let r = Pin::new(&mut *w.io.borrow_mut()).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = r {
            w.seen_in(buf.filled().get(before..).unwrap_or_default());
            if w.malformed.get().is_some() {
                buf.set_filled(before);
                w.notify.notify_one();
                return Poll::Pending;
            }
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Io<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let w = &self.0;
        let r = Pin::new(&mut *w.io.borrow_mut()).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = r {
            w.seen_out(buf.get(..n).unwrap_or_default());
        }
        r
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let w = &self.0;
        let r = Pin::new(&mut *w.io.borrow_mut()).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(mut n)) = r {
            for b in bufs {
                let take = n.min(b.len());
                w.seen_out(&b[..take]);
                n -= take;
                if n == 0 {
                    break;
                }
            }
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.0.io.borrow().is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0.io.borrow_mut()).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0.io.borrow_mut()).poll_shutdown(cx)
    }
}
