//! The watch loop: a [`PacketSource`] (usually the live ring) through the [`Analyzer`],
//! reporting events as they are found, ticking about once a second for live tables and
//! expiring idle flows by the wall clock when the source is quiet. Also
//! [`LoopbackCapture`], a background capture on `lo` for demos and tests.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use crate::analyze::{Analyzer, Filter, RunStats};
use crate::error::CaptureError;
use crate::flow::track::{Event, TrackerConfig};
use crate::io::live::LiveSource;
use crate::io::source::{Next, PacketSource};
use crate::io::writer::PcapFile;

/// What [`watch`] reports besides events.
pub trait WatchSink {
    /// A packet classification or flow summary, as soon as it is known.
    fn event(&mut self, e: &Event);
    /// Called about once a second (wall clock) with the analyzer, for refreshing tables.
    fn tick(&mut self, _a: &Analyzer) {}
    /// True when `tick` reads [`crate::flow::track::Tracker::snapshot`]: the flows it shows
    /// first take in what the kernel withheld for them.
    fn wants_snapshot(&self) -> bool {
        false
    }
}

/// Options for [`watch`].
#[derive(Debug, Clone, Default)]
pub struct WatchOptions {
    pub filter: Filter,
    /// A filter expression (see [`crate::filter`]), applied here in user space; a live source
    /// opened with [`crate::io::live::LiveSource::open_filtered`] applies it in the kernel.
    pub expr: Option<crate::filter::Expression>,
    /// Stop by itself after this long.
    pub duration: Option<Duration>,
    pub tracker: TrackerConfig,
}

/// How long frames are still read after a stop: longer than a live ring's block timeout.
pub const DRAIN: Duration = Duration::from_millis(120);

/// Run a live source until `duration` passes or `stop` is set, reporting to `sink` and
/// writing every frame to `tap` when given. Returns the run's counts; flows still open are
/// summarised through `sink` at the end.
///
/// # Errors
/// Source read errors and `tap` write errors.
pub fn watch<S: PacketSource + ?Sized>(
    source: &mut S,
    opts: &WatchOptions,
    stop: &AtomicBool,
    mut tap: Option<&mut PcapFile>,
    sink: &mut dyn WatchSink,
) -> Result<RunStats, CaptureError> {
    let mut a = Analyzer::new(opts.filter, opts.tracker.clone());
    a.expr.clone_from(&opts.expr);
    a.tracker.set_kernel(source.kernel_flows());
    let start = Instant::now();
    let mut last_tick = start;
    let mut out = Vec::new();
    let mut number = 0u64;
    // Reading the clock for every packet costs more than classifying it: the clocks are
    // read when a packet's (kernel) timestamp passes the next check time, when the source
    // is idle, and at least every 4096 packets.
    let wall = || {
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
    };
    let check_every = Duration::from_millis(100);
    let mut next_check = wall() + check_every;
    let mut since_check = 0u32;
    // After a stop (Ctrl-C, --duration), frames the kernel already holds are still read:
    // a live ring hands over a partly filled block only after its timeout.
    let mut drain_until: Option<Instant> = None;
    loop {
        if drain_until.is_none() && stop.load(Ordering::Relaxed) {
            drain_until = Some(Instant::now() + DRAIN);
        }
        let next = source.next_frame()?;
        if let Some(until) = drain_until {
            let now = Instant::now();
            // quiet after the block timeout, or a busy link: stop at twice the wait
            if now >= until && (matches!(next, Next::Idle | Next::End) || now >= until + DRAIN) {
                break;
            }
        }
        let check = match next {
            Next::Frame(f) => {
                number += 1;
                if let Some(t) = tap.as_deref_mut() {
                    t.write(&f)?;
                }
                a.frame_ahead(&f, number, &mut out);
                since_check += 1;
                f.ts >= next_check || since_check >= 4096
            }
            Next::Idle => {
                a.flush(&mut out);
                a.tracker.expire(wall(), &mut out);
                true
            }
            Next::End => break,
        };
        for e in out.drain(..) {
            sink.event(&e);
        }
        if !check {
            continue;
        }
        since_check = 0;
        next_check = wall() + check_every;
        // The few packets held for prefetching wait at most this long.
        a.flush(&mut out);
        for e in out.drain(..) {
            sink.event(&e);
        }
        if drain_until.is_none() && opts.duration.is_some_and(|d| start.elapsed() >= d) {
            drain_until = Some(Instant::now() + DRAIN);
        }
        if last_tick.elapsed() >= Duration::from_secs(1) {
            last_tick = Instant::now();
            if let Some(t) = tap.as_deref_mut() {
                t.flush()?;
            }
            if sink.wants_snapshot() {
                a.tracker.take_withheld_for_snapshot();
            }
            a.sync_stats();
            a.stats.dropped = source.dropped();
            sink.tick(&a);
        }
    }
    if let Some(t) = tap {
        t.flush()?;
    }
    source.close();
    let mut stats = a.finish(&mut out);
    for e in out.drain(..) {
        sink.event(&e);
    }
    stats.dropped = source.dropped();
    Ok(stats)
}

/// Capture on `lo` for `duration`, keeping packets to or from `port`, and return every
/// event found (classified packets, then summaries of the flows with probes). Needs
/// CAP_NET_RAW. A simple entry point for demos.
///
/// # Errors
/// As [`LiveSource::open`] and [`watch`].
pub fn capture_loopback(port: u16, duration: Duration) -> Result<Vec<Event>, CaptureError> {
    LoopbackCapture::start(port, duration)?.wait()
}

/// A loopback capture running on its own thread: the socket is open (capturing) when
/// [`LoopbackCapture::start`] returns, so a caller can start traffic right after and
/// collect the events with [`LoopbackCapture::wait`].
pub struct LoopbackCapture {
    handle: std::thread::JoinHandle<Result<Vec<Event>, CaptureError>>,
}

impl LoopbackCapture {
    /// Open `lo` now and capture packets to or from `port` for `duration` in the background.
    ///
    /// # Errors
    /// As [`LiveSource::open`] (notably [`CaptureError::Permission`] without CAP_NET_RAW).
    pub fn start(port: u16, duration: Duration) -> Result<Self, CaptureError> {
        struct Collect(Vec<Event>);
        impl WatchSink for Collect {
            fn event(&mut self, e: &Event) {
                self.0.push(e.clone());
            }
        }
        let mut src = LiveSource::open("lo", false)?;
        let opts = WatchOptions {
            filter: Filter {
                port: Some(port),
                host: None,
            },
            expr: None,
            duration: Some(duration),
            tracker: TrackerConfig::default(),
        };
        let handle = std::thread::spawn(move || {
            let mut sink = Collect(Vec::new());
            watch(&mut src, &opts, &AtomicBool::new(false), None, &mut sink)?;
            Ok(sink.0)
        });
        Ok(Self { handle })
    }

    /// Wait for the capture to end; the events found (packets, then flow summaries).
    ///
    /// # Errors
    /// Read errors from the capture.
    pub fn wait(self) -> Result<Vec<Event>, CaptureError> {
        match self.handle.join() {
            Ok(r) => r,
            Err(_) => Err(CaptureError::Socket {
                what: "run the capture thread",
                iface: "lo".into(),
                source: io::Error::other("capture thread panicked"),
            }),
        }
    }
}
