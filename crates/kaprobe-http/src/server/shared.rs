//! The connection registry and the state every task of one server shares: what eviction,
//! parking, shutdown and close logging need.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::rc::Rc;
use std::task::Waker;

use tokio::time::Instant;

use super::close::{CloseEvent, Ending, Reason};
use super::config::Config;
use super::lot::{Lot, PARK_AFTER};
use super::push::store::Hub;
use super::stats::Stats;

/// A connection's entry in the registry: what eviction, shutdown and logging need.
pub(crate) struct Ctl {
    pub(crate) slot: Cell<u32>,
    pub(crate) peer: SocketAddr,
    pub(crate) start: Instant,
    /// Non-zero while idle: the order in which it went idle.
    pub(crate) idle_seq: Cell<u64>,
    pub(crate) kill: Cell<Option<Reason>>,
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
    pub(crate) fn kill(&self, r: Reason) {
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

    pub(crate) fn request_park(&self) {
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
    /// The settings; `--control` may replace them while the server runs, so readers take
    /// the current ones with [`Shared::cfg`] and do not keep them across waits.
    cfg: RefCell<Rc<Config>>,
    /// Notified when the settings change (the parking lot re-reads its timeout).
    pub(crate) cfg_changed: tokio::sync::Notify,
    pub(crate) stats: Stats,
    pub(crate) shutting_down: Cell<bool>,
    pub(crate) conns: RefCell<Vec<Option<Rc<Ctl>>>>,
    pub(crate) lot: Lot,
    pub(crate) hub: Hub,
    free: RefCell<Vec<u32>>,
    idle_order: RefCell<VecDeque<(u64, u32)>>,
    next_seq: Cell<u64>,
    #[allow(clippy::type_complexity)]
    on_close: RefCell<Box<dyn FnMut(&CloseEvent)>>,
}

impl Shared {
    /// The settings in force now.
    pub(crate) fn cfg(&self) -> Rc<Config> {
        self.cfg.borrow().clone()
    }

    /// Put `cfg` in force (already validated) and wake whoever waits on a setting.
    pub(crate) fn set_cfg(&self, cfg: Config) {
        *self.cfg.borrow_mut() = Rc::new(cfg);
        self.cfg_changed.notify_waiters();
    }

    pub(crate) fn new(
        cfg: Config,
        stats: Stats,
        hub: Hub,
        lot: Lot,
        on_close: Box<dyn FnMut(&CloseEvent)>,
    ) -> Self {
        Self {
            hub,
            cfg: RefCell::new(Rc::new(cfg)),
            cfg_changed: tokio::sync::Notify::new(),
            stats,
            shutting_down: Cell::new(false),
            conns: RefCell::new(Vec::new()),
            lot,
            free: RefCell::new(Vec::new()),
            idle_order: RefCell::new(VecDeque::new()),
            next_seq: Cell::new(0),
            on_close: RefCell::new(on_close),
        }
    }

    pub(crate) fn register(&self, peer: SocketAddr) -> Rc<Ctl> {
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
        self.cfg().keepalive_timeout > PARK_AFTER
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
            hot.push_back((seq, ctl.slot.get(), Instant::now() + PARK_AFTER));
            if hot.len() == 1 {
                self.lot.hot_notify.notify_one();
            }
        }
        if self.cfg().max_connections > 0 {
            let mut q = self.idle_order.borrow_mut();
            q.push_back((seq, ctl.slot.get()));
            if q.len() > 2 * self.cfg().max_connections + 1024 {
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
    pub(crate) fn oldest_idle(&self) -> Option<Rc<Ctl>> {
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
