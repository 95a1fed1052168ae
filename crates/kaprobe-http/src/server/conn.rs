//! Drives one connection: reads into a shared scratch buffer, runs the protocol state
//! machine, writes responses, keeps the idle and header timers, and ends the connection.
//!
//! Memory while idle: the connection owns no buffers (partial input and unsent output are
//! copied into per-connection vectors only when they exist, and freed before going idle).

use std::cell::RefCell;
use std::io;
use std::rc::Rc;

use tokio::net::TcpStream;
use tokio::time::{sleep, sleep_until, Instant};

use super::close::{io_reason, Ending, Reason};
use super::config::CloseStyle;
use super::proto::{error_response, Ctx, Outcome, PushStart};
use super::push::{self, After};
use super::session::Session;
use super::shared::{Ctl, Shared, Signal};

enum Wake {
    Readable,
    Failed(io::Error),
    Signal(Signal),
}

/// Wait, without a timer, for input on an idle connection or a signal from the server.
fn idle_wait<'a>(
    stream: &'a TcpStream,
    ctl: &'a Ctl,
) -> impl std::future::Future<Output = Wake> + 'a {
    std::future::poll_fn(move |cx| {
        match stream.poll_read_ready(cx) {
            std::task::Poll::Ready(Ok(())) => return std::task::Poll::Ready(Wake::Readable),
            std::task::Poll::Ready(Err(e)) => return std::task::Poll::Ready(Wake::Failed(e)),
            std::task::Poll::Pending => {}
        }
        if let Some(s) = ctl.signal() {
            return std::task::Poll::Ready(Wake::Signal(s));
        }
        ctl.register(cx.waker());
        std::task::Poll::Pending
    })
}

const READ_BUF: usize = 64 * 1024;

thread_local! {
    /// Read and write scratch shared by every connection on this thread; only borrowed in
    /// synchronous sections, never across an await.
    static SCRATCH: RefCell<(Vec<u8>, Vec<u8>)> =
        RefCell::new((vec![0; READ_BUF], Vec::with_capacity(READ_BUF)));
}

enum End {
    /// Finish with a FIN, then drain.
    Fin(Reason, &'static str),
    /// Idle timeout in the configured style.
    Idle,
    /// The peer is gone (or broken): just close.
    Gone(Reason, &'static str),
    /// Idle long enough: move to the parking lot.
    Park(Instant),
    /// A push request: [`super::push`] takes over, with the input read beyond its head.
    Push(Box<PushStart>, Vec<u8>),
}

enum Step {
    WouldBlock,
    Eof,
    Err(io::Error),
    Done { outcome: Outcome, answered: bool },
}

/// What the accept fast path already did, for the task to carry on from.
pub(crate) struct Carry {
    session: Session,
    outq: Vec<u8>,
    outcome: Outcome,
    answered: bool,
    /// The session's pending input may hold complete requests: process it before reading.
    reprocess: bool,
}

impl Carry {
    /// Back to HTTP after a push request was answered, with the input read beyond it.
    pub(crate) fn after_push(served: u64, pending: Vec<u8>) -> Box<Self> {
        Box::new(Self {
            reprocess: !pending.is_empty(),
            session: Session::resume_with(served, pending),
            outq: Vec::new(),
            outcome: Outcome::NeedMore,
            answered: true,
        })
    }
}

enum First {
    /// Nothing read yet (or a clean keep-alive exchange done): start a task.
    Task(Option<Box<Carry>>),
    /// Finished without a task.
    Closed(Reason, &'static str, Ending),
}

/// A new connection. Its first request has usually arrived with it: read, answer and (when
/// the client said it was its last) close it right here, with no registration and no task.
/// Otherwise return the connection, and what was done so far, for the caller to run as a
/// task.
pub(crate) fn accepted(
    std: std::net::TcpStream,
    ctl: &Rc<Ctl>,
    sh: &Rc<Shared>,
) -> Option<(TcpStream, Option<Box<Carry>>)> {
    use std::io::{Read, Write};
    let first = SCRATCH.with_borrow_mut(|(rbuf, wbuf)| {
        let n = match (&std).read(rbuf) {
            Ok(0) => return First::Closed(Reason::ClientFin, "", Ending::PeerGone),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return First::Task(None),
            Err(e) => return First::Closed(io_reason(&e), "", Ending::PeerGone),
        };
        let mut session = Session::default();
        wbuf.clear();
        let cfg = sh.cfg();
        let ctx = Ctx {
            cfg: &cfg,
            stats: &sh.stats,
            shutting_down: sh.shutting_down.get(),
        };
        let outcome = session.feed(&rbuf[..n], wbuf, &ctx);
        ctl.served.set(session.served());
        let mut done = 0;
        while done < wbuf.len() {
            match (&std).write(&wbuf[done..]) {
                Ok(k) => done += k,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return First::Closed(io_reason(&e), "", Ending::PeerGone),
            }
        }
        let answered = !wbuf.is_empty();
        if answered {
            ctl.idle_since.set(Instant::now());
        }
        let all_out = done == wbuf.len();
        match outcome {
            // The client said this was its last request and sent nothing more: close now.
            Outcome::Close(r @ (Reason::ClientCloseHeader | Reason::Http10), d)
                if all_out && !session.discarded_input() =>
            {
                First::Closed(r, d, Ending::Fin)
            }
            // Nothing to carry over: not even part of a request (a head or body still to come
            // must reach the task with the state it started in).
            Outcome::NeedMore if all_out && session.is_idle() => First::Task(None),
            _ => First::Task(Some(Box::new(Carry {
                session,
                outq: wbuf[done..].to_vec(),
                outcome,
                answered,
                reprocess: false,
            }))),
        }
    });
    match first {
        First::Closed(r, d, e) => {
            sh.report(ctl, r, d, e);
            drop(std);
            sh.unregister(ctl);
        }
        First::Task(carry) => {
            let _ = std.set_nodelay(true);
            match TcpStream::from_std(std) {
                Ok(s) => return Some((s, carry)),
                Err(_) => {
                    sh.report(ctl, Reason::IoError, "register", Ending::PeerGone);
                    sh.unregister(ctl);
                }
            }
        }
    }
    None
}

/// Serve a connection until it ends, or until it has been idle long enough to park: then
/// the stream and the time it went idle are returned for the parking lot.
pub(crate) async fn serve(
    mut stream: TcpStream,
    ctl: Rc<Ctl>,
    sh: Rc<Shared>,
    mut carry: Option<Box<Carry>>,
) -> Option<(TcpStream, Instant)> {
    let end = loop {
        match drive(&stream, &ctl, &sh, carry.take()).await {
            End::Push(start, pending) => {
                // Boxed: the push state machine is large, and only push connections need it
                // (inline, it would grow every HTTP connection's task).
                match Box::pin(push::serve(stream, pending, *start, &ctl, &sh)).await {
                    After::Http(s, pending) => {
                        stream = s;
                        carry = Some(Carry::after_push(ctl.served.get(), pending));
                    }
                    After::Fin(s, r, d) => {
                        stream = s;
                        break End::Fin(r, d);
                    }
                    After::Gone(s, r, d) => {
                        stream = s;
                        break End::Gone(r, d);
                    }
                    After::Done => {
                        sh.unregister(&ctl);
                        return None;
                    }
                }
            }
            end => break end,
        }
    };
    match end {
        End::Park(since) => return Some((stream, since)),
        End::Fin(r @ (Reason::ClientCloseHeader | Reason::Http10), d)
            if nothing_unread(&stream) =>
        {
            // The client said this was its last request (RFC 9112 section 9.6: it must not
            // send more) and nothing of it is unread: a plain close sends our FIN without
            // risk of an RST, so no drain is needed (as nginx does).
            sh.report(&ctl, r, d, Ending::Fin);
        }
        End::Fin(r, d) => {
            let _ = socket2::SockRef::from(&stream).shutdown(std::net::Shutdown::Write);
            sh.report(&ctl, r, d, Ending::Fin);
            linger(&stream, &sh).await;
        }
        End::Idle => match sh.cfg().close_style {
            CloseStyle::Fin => {
                let _ = socket2::SockRef::from(&stream).shutdown(std::net::Shutdown::Write);
                sh.report(&ctl, Reason::IdleTimeout, "", Ending::Fin);
                linger(&stream, &sh).await;
            }
            CloseStyle::Rst => {
                let _ = socket2::SockRef::from(&stream).set_linger(Some(std::time::Duration::ZERO));
                sh.report(&ctl, Reason::IdleTimeout, "", Ending::Rst);
            }
        },
        End::Gone(r, d) => sh.report(&ctl, r, d, Ending::PeerGone),
        End::Push(..) => {}
    }
    drop(stream);
    sh.unregister(&ctl);
    None
}

/// True when no client bytes wait in the socket (readiness as last seen by the runtime, then
/// one read if it says there may be some).
fn nothing_unread(stream: &TcpStream) -> bool {
    SCRATCH.with_borrow_mut(|(rbuf, _)| match stream.try_read(rbuf) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => e.kind() == io::ErrorKind::WouldBlock,
    })
}

/// After our FIN: read and discard until the client closes or the linger time is over, so
/// that unread client bytes do not turn our close into an RST that destroys the response.
async fn linger(stream: &TcpStream, sh: &Shared) {
    let deadline = Instant::now() + sh.cfg().linger;
    let mut budget: usize = 1 << 20;
    loop {
        match SCRATCH.with_borrow_mut(|(rbuf, _)| stream.try_read(rbuf)) {
            Ok(0) => return,
            Ok(n) => {
                budget = budget.saturating_sub(n);
                if budget == 0 {
                    return;
                }
                continue;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(_) => return,
        }
        tokio::select! {
            biased;
            r = stream.readable() => if r.is_err() { return },
            () = sleep_until(deadline) => return,
        }
    }
}

#[allow(clippy::too_many_lines)]
async fn drive(stream: &TcpStream, ctl: &Ctl, sh: &Shared, carry: Option<Box<Carry>>) -> End {
    let mut cfg;
    let mut reprocess = false;
    let (mut session, mut outq, mut first) = match carry {
        Some(c) => {
            let c = *c;
            let step = Step::Done {
                outcome: c.outcome,
                answered: c.answered,
            };
            reprocess = c.reprocess;
            (c.session, c.outq, Some(step))
        }
        None => (Session::resume(ctl.served.get()), Vec::new(), None),
    };
    let mut unprocessed = false;
    // A connection back from the parking lot keeps its idle clock.
    let mut idle_since = ctl.idle_since.get();
    sh.set_busy(ctl);
    let mut partial_since: Option<Instant> = None;
    loop {
        // settings changed through --control apply from the next step on
        cfg = sh.cfg();
        let step = match first.take() {
            Some(s) => s,
            None => round(stream, &mut session, &mut outq, unprocessed, sh),
        };
        unprocessed = false;
        match step {
            Step::WouldBlock => {
                if session.is_idle() {
                    session.shrink();
                    if sh.shutting_down.get() {
                        return End::Fin(Reason::Shutdown, "");
                    }
                    sh.set_idle(ctl, idle_since);
                    let wake = if sh.parking() {
                        Some(idle_wait(stream, ctl).await)
                    } else {
                        let deadline = idle_since + cfg.keepalive_timeout;
                        tokio::select! {
                            biased;
                            w = idle_wait(stream, ctl) => Some(w),
                            () = sleep_until(deadline) => None,
                        }
                    };
                    match wake {
                        None | Some(Wake::Signal(Signal::Kill(Reason::IdleTimeout))) => {
                            return End::Idle
                        }
                        Some(Wake::Signal(Signal::Park)) => return End::Park(idle_since),
                        Some(Wake::Failed(e)) => return End::Gone(io_reason(&e), ""),
                        Some(Wake::Signal(Signal::Kill(r))) if r != Reason::Shutdown => {
                            return End::Fin(r, "")
                        }
                        Some(Wake::Readable | Wake::Signal(Signal::Kill(_))) => {
                            sh.set_busy(ctl);
                        }
                    }
                } else {
                    let since = *partial_since.get_or_insert_with(Instant::now);
                    let deadline = since + cfg.header_timeout;
                    let timed_out = tokio::select! {
                        biased;
                        r = stream.readable() => match r {
                            Ok(()) => false,
                            Err(e) => return End::Gone(io_reason(&e), "mid-request"),
                        },
                        () = sleep_until(deadline) => true,
                    };
                    if timed_out {
                        let detail = if session.proto.in_body() {
                            "request body stalled"
                        } else {
                            "request head not completed in time"
                        };
                        let mut out = Vec::new();
                        sh.stats.bad_requests.set(sh.stats.bad_requests.get() + 1);
                        error_response(&mut out, 408, detail);
                        let _ = stream.try_write(&out);
                        return End::Fin(Reason::HeaderTimeout, detail);
                    }
                }
            }
            Step::Eof => {
                return if session.is_idle() {
                    End::Gone(Reason::ClientFin, "")
                } else {
                    End::Gone(Reason::ClientFin, "mid-request")
                };
            }
            Step::Err(e) => return End::Gone(io_reason(&e), ""),
            Step::Done { outcome, answered } => {
                ctl.served.set(session.served());
                if !outq.is_empty() {
                    if let Err(end) = flush(stream, &mut outq, sh).await {
                        return end;
                    }
                }
                let now = Instant::now();
                if answered {
                    idle_since = now;
                    partial_since = None;
                }
                if session.proto.in_body() {
                    // Body reads get the header timeout as an inactivity timer.
                    partial_since = Some(now);
                }
                match outcome {
                    Outcome::NeedMore => {
                        unprocessed = std::mem::take(&mut reprocess) && session.has_pending();
                    }
                    Outcome::Push => {
                        return match session.proto.take_push() {
                            Some(start) => End::Push(start, session.take_pending()),
                            None => End::Fin(Reason::BadRequest, "push request lost"),
                        };
                    }
                    Outcome::Close(r, d) => return End::Fin(r, d),
                    Outcome::Delay(d) => {
                        sleep(d).await;
                        let mut out = Vec::new();
                        let ctx = Ctx {
                            cfg: &cfg,
                            stats: &sh.stats,
                            shutting_down: sh.shutting_down.get(),
                        };
                        let close = session.proto.finish_delayed(&mut out, &ctx);
                        ctl.served.set(session.served());
                        outq.extend_from_slice(&out);
                        if let Err(end) = flush(stream, &mut outq, sh).await {
                            return end;
                        }
                        if let Some(r) = close {
                            return End::Fin(r, "");
                        }
                        idle_since = Instant::now();
                        partial_since = None;
                        unprocessed = session.has_pending();
                    }
                }
            }
        }
    }
}

/// Write everything queued, waiting for the socket; the client gets the header timeout to
/// make room.
async fn flush(stream: &TcpStream, outq: &mut Vec<u8>, sh: &Shared) -> Result<(), End> {
    let deadline = Instant::now() + sh.cfg().header_timeout;
    let mut done = 0;
    while done < outq.len() {
        match stream.try_write(&outq[done..]) {
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                tokio::select! {
                    biased;
                    r = stream.writable() => if let Err(e) = r { return Err(End::Gone(io_reason(&e), "")) },
                    () = sleep_until(deadline) => return Err(End::Gone(Reason::SendTimeout, "client not reading")),
                }
            }
            Err(e) => return Err(End::Gone(io_reason(&e), "")),
        }
    }
    *outq = Vec::new();
    Ok(())
}

/// One synchronous step: read what is there (or re-run unprocessed input), answer every
/// complete request, write as much as the socket takes and queue the rest.
fn round(
    stream: &TcpStream,
    session: &mut Session,
    outq: &mut Vec<u8>,
    unprocessed: bool,
    sh: &Shared,
) -> Step {
    SCRATCH.with_borrow_mut(|(rbuf, wbuf)| {
        let n = if unprocessed {
            0
        } else {
            let r = stream.try_read(rbuf);
            if matches!(r, Ok(n) if n > 0 && n < rbuf.len()) {
                // A short read drained the socket: forget its readiness now, so the next
                // attempt does not cost a read() that can only return EAGAIN. New data
                // raises a new readiness event.
                let _ = stream.try_io(tokio::io::Interest::READABLE, || {
                    Err::<(), _>(io::Error::from(io::ErrorKind::WouldBlock))
                });
            }
            match r {
                Ok(0) => return Step::Eof,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Step::WouldBlock,
                Err(e) => return Step::Err(e),
            }
        };
        let cfg = sh.cfg();
        let ctx = Ctx {
            cfg: &cfg,
            stats: &sh.stats,
            shutting_down: sh.shutting_down.get(),
        };
        wbuf.clear();
        let outcome = session.feed(&rbuf[..n], wbuf, &ctx);
        let answered = !wbuf.is_empty();
        let mut done = 0;
        while done < wbuf.len() {
            match stream.try_write(&wbuf[done..]) {
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Step::Err(e),
            }
        }
        if done < wbuf.len() {
            outq.extend_from_slice(&wbuf[done..]);
        }
        if wbuf.capacity() > 4 * READ_BUF {
            *wbuf = Vec::with_capacity(READ_BUF);
        }
        Step::Done { outcome, answered }
    })
}
