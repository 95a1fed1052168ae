//! The parking lot's data: a private epoll set holding parked connections, its timerfd, and
//! the queues of parked and not-yet-parked idle connections. What moves connections in and
//! out of it is in [`super::park`].

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

use tokio::io::unix::AsyncFd;
use tokio::sync::Notify;
use tokio::time::Instant;

/// Idle time after which a connection is parked.
pub const PARK_AFTER: Duration = Duration::from_millis(100);

pub(crate) struct Lot {
    pub(super) ep: AsyncFd<OwnedFd>,
    /// (park sequence, registry slot), in parking order.
    pub(super) queue: RefCell<VecDeque<(u64, u32)>>,
    pub(super) next: std::cell::Cell<u64>,
    pub(super) notify: Notify,
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
pub(super) const TIMER_TOKEN: u64 = u64::MAX;

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

    pub(super) fn ctl(&self, op: libc::c_int, fd: i32, slot: u32) -> io::Result<()> {
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
    pub(super) fn arm(&self, at: Instant) -> bool {
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
    pub(super) fn clear_timer(&self) {
        if let Some(t) = &self.timer {
            let mut n = 0u64;
            // SAFETY: reading 8 bytes into `n` from the open, non-blocking timerfd.
            let _ = unsafe { libc::read(t.as_raw_fd(), std::ptr::from_mut(&mut n).cast(), 8) };
        }
        self.armed.set(None);
    }
}
