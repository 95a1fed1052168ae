//! The parking lot: connections idle for longer than [`PARK_AFTER`] leave tokio (no task, no
//! registration, no buffers) and wait in a private epoll set. What remains per connection is
//! its small registry entry. Data, a FIN or an RST wakes a parked connection back into a task;
//! its idle timeout, eviction or shutdown does the same with a kill reason already set, so all
//! closing happens in one place ([`super::conn`]).
//!
//! Connections park in the order they went idle, and the idle timeout is the same for all, so
//! the queue of parked connections is also the queue of their deadlines: one timer serves all.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::rc::Rc;
use std::time::Duration;

use tokio::io::unix::AsyncFd;
use tokio::sync::Notify;
use tokio::time::{sleep_until, Instant};

use super::{Ctl, Ending, Reason, Shared};

/// Idle time after which a connection is parked.
pub const PARK_AFTER: Duration = Duration::from_millis(100);

pub(crate) struct Lot {
    ep: AsyncFd<OwnedFd>,
    /// (park sequence, registry slot), in parking order.
    queue: RefCell<VecDeque<(u64, u32)>>,
    next: std::cell::Cell<u64>,
    notify: Notify,
    /// Idle connections not yet parked, (idle sequence, slot, park time) in the order they
    /// went idle.
    pub(crate) hot: RefCell<VecDeque<(u64, u32, Instant)>>,
    pub(crate) hot_notify: Notify,
    /// A timerfd in the lot's epoll set for the head's deadline, so an idle close costs one
    /// timer wake-up (tokio's wheel wakes first at a coarse slot, then at the deadline; on
    /// a virtual machine each wake-up of an idle process can be milliseconds late).
    /// `None` where timerfd is refused: then tokio's timer is used.
    timer: Option<OwnedFd>,
    /// The deadline the timer is armed for.
    armed: std::cell::Cell<Option<Instant>>,
}

/// The lot's epoll token for its timer (registry slots are u32).
const TIMER_TOKEN: u64 = u64::MAX;

impl Lot {
    pub(crate) fn new() -> io::Result<Self> {
        // SAFETY: epoll_create1 has no preconditions; we check the result.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh descriptor we own.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        let timer = new_timer(&owned);
        // SAFETY: `owned` is an open epoll descriptor that the AsyncFd owns from here on, so
        // it stays open and refers to the same file for the registration's life.
        let ep = unsafe { AsyncFd::register_with_interest(owned, tokio::io::Interest::READABLE) }
            .map_err(io::Error::from)?;
        Ok(Self {
            timer,
            armed: std::cell::Cell::new(None),
            ep,
            queue: RefCell::new(VecDeque::new()),
            next: std::cell::Cell::new(0),
            notify: Notify::new(),
            hot: RefCell::new(VecDeque::new()),
            hot_notify: Notify::new(),
        })
    }

    fn ctl(&self, op: libc::c_int, fd: i32, slot: u32) -> io::Result<()> {
        let mut ev = libc::epoll_event {
            events: (libc::EPOLLIN | libc::EPOLLRDHUP) as u32,
            u64: u64::from(slot),
        };
        // SAFETY: both descriptors are open; ev lives for the call.
        let r = unsafe { libc::epoll_ctl(self.ep.as_raw_fd(), op, fd, &raw mut ev) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

/// A non-blocking CLOCK_MONOTONIC timerfd (the clock `Instant` reads), added to `ep`.
fn new_timer(ep: &OwnedFd) -> Option<OwnedFd> {
    // SAFETY: timerfd_create has no preconditions; we check the result.
    let fd = unsafe {
        libc::timerfd_create(
            libc::CLOCK_MONOTONIC,
            libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
        )
    };
    if fd < 0 {
        return None;
    }
    // SAFETY: fd is a fresh descriptor we own.
    let timer = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut ev = libc::epoll_event {
        events: libc::EPOLLIN as u32,
        u64: TIMER_TOKEN,
    };
    // SAFETY: both descriptors are open; ev lives for the call.
    let r = unsafe {
        libc::epoll_ctl(
            ep.as_raw_fd(),
            libc::EPOLL_CTL_ADD,
            timer.as_raw_fd(),
            &raw mut ev,
        )
    };
    (r == 0).then_some(timer)
}

impl Lot {
    /// Arm the timer to fire at `at` (once). False when there is no timer or the kernel
    /// refuses, so the caller falls back on tokio's timer.
    fn arm(&self, at: Instant) -> bool {
        let Some(t) = &self.timer else { return false };
        if self.armed.get() == Some(at) {
            return true;
        }
        let left = at.saturating_duration_since(Instant::now());
        // An all-zero it_value disarms: ask for at least 1 ns.
        let left = left.max(Duration::from_nanos(1));
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: libc::time_t::try_from(left.as_secs()).unwrap_or(libc::time_t::MAX),
                // Below 10^9: fits a c_long of any width.
                tv_nsec: left.subsec_nanos() as libc::c_long,
            },
        };
        // SAFETY: the timerfd is open; spec lives for the call; no old value asked for.
        let r = unsafe {
            libc::timerfd_settime(t.as_raw_fd(), 0, &raw const spec, std::ptr::null_mut())
        };
        if r != 0 {
            return false;
        }
        self.armed.set(Some(at));
        true
    }

    /// Consume the timer's expiry count after it fired.
    fn clear_timer(&self) {
        if let Some(t) = &self.timer {
            let mut n = 0u64;
            // SAFETY: reading 8 bytes into `n` from the open, non-blocking timerfd.
            let _ = unsafe { libc::read(t.as_raw_fd(), std::ptr::from_mut(&mut n).cast(), 8) };
        }
        self.armed.set(None);
    }
}

/// Move an idle connection out of tokio into the lot. On failure the connection is closed.
pub(crate) fn park(
    sh: &Rc<Shared>,
    stream: tokio::net::TcpStream,
    ctl: &Rc<Ctl>,
    idle_since: Instant,
) {
    let lot = &sh.lot;
    let std = match stream.into_std() {
        Ok(s) => s,
        Err(_) => {
            sh.report(ctl, Reason::IoError, "park", Ending::PeerGone);
            sh.unregister(ctl);
            return;
        }
    };
    let slot = ctl.slot.get();
    if lot.ctl(libc::EPOLL_CTL_ADD, std.as_raw_fd(), slot).is_err() {
        // Keep it as a task instead.
        if let Ok(s) = tokio::net::TcpStream::from_std(std) {
            tokio::task::spawn_local(super::conn::serve(s, ctl.clone(), sh.clone(), None));
        }
        return;
    }
    let seq = lot.next.get() + 1;
    lot.next.set(seq);
    ctl.park_seq.set(seq);
    ctl.idle_since.set(idle_since);
    *ctl.parked.borrow_mut() = Some(std);
    let mut q = lot.queue.borrow_mut();
    q.push_back((seq, slot));
    if q.len() == 1 {
        lot.notify.notify_one();
    }
}

/// Bring a parked connection back as a task, optionally told to close for `kill`.
/// Returns false if it was not parked.
pub(crate) fn unpark(sh: &Rc<Shared>, ctl: &Rc<Ctl>, kill: Option<Reason>) -> bool {
    let Some(std) = ctl.parked.borrow_mut().take() else {
        return false;
    };
    let _ = sh.lot.ctl(libc::EPOLL_CTL_DEL, std.as_raw_fd(), 0);
    ctl.park_seq.set(0);
    if let Some(r) = kill {
        if ctl.kill.get().is_none() {
            ctl.kill.set(Some(r));
        }
    }
    match tokio::net::TcpStream::from_std(std) {
        Ok(s) => {
            tokio::task::spawn_local(super::conn::serve(s, ctl.clone(), sh.clone(), None));
        }
        Err(_) => {
            sh.report(ctl, Reason::IoError, "unpark", Ending::PeerGone);
            sh.unregister(ctl);
        }
    }
    true
}

fn lookup(sh: &Shared, slot: u32) -> Option<Rc<Ctl>> {
    sh.conns.borrow().get(slot as usize).and_then(Clone::clone)
}

/// The lot's task: wakes parked connections with input, and closes them at their deadline.
pub(crate) async fn run(sh: Rc<Shared>) {
    let timeout = sh.cfg.keepalive_timeout;
    let mut events = [libc::epoll_event { events: 0, u64: 0 }; 256];
    loop {
        // The oldest valid parked connection, dropping stale queue entries.
        let head = loop {
            let front = sh.lot.queue.borrow().front().copied();
            let Some((seq, slot)) = front else { break None };
            match lookup(&sh, slot) {
                Some(c) if c.park_seq.get() == seq => break Some(c),
                _ => {
                    sh.lot.queue.borrow_mut().pop_front();
                }
            }
        };
        let deadline = head
            .as_ref()
            .map_or_else(Instant::now, |c| c.idle_since.get() + timeout);
        if let Some(c) = &head {
            if deadline <= Instant::now() {
                // Input already waiting wins over the deadline (as nginx handles events
                // before expired timers): it may be the head's next request.
                if drain(&sh, &mut events) > 0 {
                    continue;
                }
                sh.lot.queue.borrow_mut().pop_front();
                unpark(&sh, c, Some(Reason::IdleTimeout));
                continue;
            }
        }
        let by_timerfd = head.is_some() && sh.lot.arm(deadline);
        tokio::select! {
            biased;
            g = sh.lot.ep.readable() => {
                let Ok(mut guard) = g else { return };
                drain(&sh, &mut events);
                // Drained to empty: wait for the next edge.
                guard.clear_ready();
            }
            () = sleep_until(deadline), if head.is_some() && !by_timerfd => {
                if let Some(c) = head {
                    sh.lot.queue.borrow_mut().pop_front();
                    unpark(&sh, &c, Some(Reason::IdleTimeout));
                }
            }
            () = sh.lot.notify.notified(), if head.is_none() => {}
        }
    }
}

/// Handle every event waiting in the lot, without blocking: parked connections with input
/// (or a FIN or RST) go back to tasks; a timer expiry is consumed (the deadline itself is
/// checked by the caller). Returns the number of events handled.
fn drain(sh: &Rc<Shared>, events: &mut [libc::epoll_event]) -> usize {
    let cap = i32::try_from(events.len()).unwrap_or(i32::MAX);
    let mut handled = 0;
    loop {
        // SAFETY: events is a valid buffer of `cap` entries; timeout 0.
        let n = unsafe { libc::epoll_wait(sh.lot.ep.as_raw_fd(), events.as_mut_ptr(), cap, 0) };
        let Ok(n) = usize::try_from(n) else {
            return handled;
        };
        if n == 0 {
            return handled;
        }
        handled += n;
        for ev in &events[..n] {
            if ev.u64 == TIMER_TOKEN {
                sh.lot.clear_timer();
                continue;
            }
            let slot = u32::try_from(ev.u64).unwrap_or(u32::MAX);
            if let Some(c) = lookup(sh, slot) {
                unpark(sh, &c, None);
            }
        }
    }
}

/// The sweeper's task: asks connections idle for [`PARK_AFTER`] to park. Entries are in
/// idle order, so only the head is ever waited for; entries of connections that became busy
/// again are dropped as they reach the head. No connection keeps a timer of its own.
pub(crate) async fn sweep(sh: Rc<Shared>) {
    loop {
        let front = sh.lot.hot.borrow().front().copied();
        let Some((seq, slot, at)) = front else {
            sh.lot.hot_notify.notified().await;
            continue;
        };
        let valid =
            lookup(&sh, slot).filter(|c| c.idle_seq.get() == seq && c.parked.borrow().is_none());
        let Some(c) = valid else {
            sh.lot.hot.borrow_mut().pop_front();
            continue;
        };
        drop(c);
        if Instant::now() < at {
            sleep_until(at).await;
            continue;
        }
        sh.lot.hot.borrow_mut().pop_front();
        if let Some(c) = lookup(&sh, slot) {
            c.request_park();
        }
    }
}
