//! The parking lot: connections idle for longer than [`PARK_AFTER`] leave tokio (no task, no
//! registration, no buffers) and wait in a private epoll set. What remains per connection is
//! its small registry entry. Data, a FIN or an RST wakes a parked connection back into a task;
//! its idle timeout, eviction or shutdown does the same with a kill reason already set, so all
//! closing happens in one place ([`super::conn`]).
//!
//! Connections park in the order they went idle, and the idle timeout is the same for all, so
//! the queue of parked connections is also the queue of their deadlines: one timer serves all.
use std::os::fd::AsRawFd;
use std::rc::Rc;

use tokio::time::{sleep_until, Instant};

use super::close::{Ending, Reason};
use super::conn::{self, Carry};
pub use super::lot::PARK_AFTER;
use super::lot::TIMER_TOKEN;
use super::shared::{Ctl, Shared};

/// Run a connection as a task; when it has been idle long enough, it moves into the lot.
pub(crate) fn spawn(
    stream: tokio::net::TcpStream,
    ctl: Rc<Ctl>,
    sh: Rc<Shared>,
    carry: Option<Box<Carry>>,
) {
    tokio::task::spawn_local(async move {
        if let Some((stream, since)) = conn::serve(stream, ctl.clone(), sh.clone(), carry).await {
            park(&sh, stream, &ctl, since);
        }
    });
}

/// Ask a connection to close for `r`: parked ones are woken into a task to do it.
pub(crate) fn kill_conn(sh: &Rc<Shared>, ctl: &Rc<Ctl>, r: Reason) {
    if !unpark(sh, ctl, Some(r)) {
        ctl.kill(r);
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
            spawn(s, ctl.clone(), sh.clone(), None);
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
            spawn(s, ctl.clone(), sh.clone(), None);
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
    let mut events = [libc::epoll_event { events: 0, u64: 0 }; 256];
    loop {
        // read each round: `--control` may change it
        let timeout = sh.cfg().keepalive_timeout;
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
            () = sh.cfg_changed.notified() => {}
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
