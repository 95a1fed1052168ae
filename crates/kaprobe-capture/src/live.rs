//! Live capture from an AF_PACKET socket (Linux), and the loop that feeds it to the tracker.
//!
//! On a loopback interface every packet passes the tap twice (once outgoing, once incoming):
//! the outgoing copy is dropped (PACKET_IGNORE_OUTGOING where the kernel has it, and by
//! `sll_pkttype` in any case). On other interfaces both directions are kept: a host's own
//! probes are outgoing packets.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use crate::analyze::{Analyzer, Filter, RunStats};
use crate::error::CaptureError;
use crate::packet::LinkType;
use crate::source::{Frame, Next, PacketSource};
use crate::track::{Event, TrackerConfig};
use crate::writer::PcapWriter;

const PACKET_IGNORE_OUTGOING: libc::c_int = 23;
const PACKET_STATISTICS: libc::c_int = 6;
const IFF_LOOPBACK: u32 = 0x8;

#[repr(C)]
#[derive(Default)]
struct TpacketStats {
    tp_packets: u32,
    tp_drops: u32,
}

/// A live AF_PACKET capture on one interface.
pub struct LiveSource {
    fd: OwnedFd,
    iface: String,
    loopback: bool,
    link: LinkType,
    buf: Vec<u8>,
    kernel_drops: u64,
    since_stats: u32,
}

fn names_of_interfaces() -> String {
    let mut names: Vec<String> = pnet_datalink::interfaces()
        .into_iter()
        .map(|i| i.name)
        .collect();
    names.sort();
    if names.is_empty() {
        "none found".into()
    } else {
        names.join(", ")
    }
}

fn setsockopt<T>(fd: &OwnedFd, level: libc::c_int, name: libc::c_int, v: &T) -> io::Result<()> {
    // SAFETY: `v` points to a live, initialised T and we pass its exact size.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            std::ptr::from_ref(v).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

impl LiveSource {
    /// Open `iface` for capture (promiscuous mode only when asked).
    ///
    /// # Errors
    /// [`CaptureError::NoSuchInterface`], [`CaptureError::Permission`] without CAP_NET_RAW,
    /// [`CaptureError::Socket`] for other socket failures.
    pub fn open(iface: &str, promisc: bool) -> Result<Self, CaptureError> {
        let Some(ni) = pnet_datalink::interfaces()
            .into_iter()
            .find(|i| i.name == iface)
        else {
            return Err(CaptureError::NoSuchInterface {
                iface: iface.into(),
                available: names_of_interfaces(),
            });
        };
        let loopback = ni.flags & IFF_LOOPBACK != 0;
        let arphrd = std::fs::read_to_string(format!("/sys/class/net/{iface}/type"))
            .ok()
            .and_then(|s| s.trim().parse::<u16>().ok())
            .unwrap_or(if loopback {
                libc::ARPHRD_LOOPBACK
            } else {
                libc::ARPHRD_ETHER
            });
        // Ethernet-framed devices (Ethernet, veth, loopback) give Ethernet headers; anything
        // else (tun, ppp, ...) is read cooked, as raw IP.
        let (kind, link) = if arphrd == libc::ARPHRD_ETHER || arphrd == libc::ARPHRD_LOOPBACK {
            (libc::SOCK_RAW, LinkType::Ethernet)
        } else {
            (libc::SOCK_DGRAM, LinkType::RawIp)
        };
        let sock_err = |what: &'static str, e: io::Error| {
            if matches!(e.raw_os_error(), Some(libc::EPERM | libc::EACCES)) {
                CaptureError::Permission {
                    iface: iface.into(),
                }
            } else {
                CaptureError::Socket {
                    what,
                    iface: iface.into(),
                    source: e,
                }
            }
        };
        // Protocol 0: receive nothing until bound to the interface below.
        // SAFETY: plain socket(2) call with constant arguments.
        let raw = unsafe { libc::socket(libc::AF_PACKET, kind | libc::SOCK_CLOEXEC, 0) };
        if raw < 0 {
            return Err(sock_err("open a packet socket", io::Error::last_os_error()));
        }
        // SAFETY: `raw` is a fresh descriptor we own and nothing else will close.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let proto = (libc::ETH_P_ALL as u16).to_be();
        // SAFETY: sockaddr_ll is plain old data; all-zero is a valid value.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = proto;
        sll.sll_ifindex = i32::try_from(ni.index).unwrap_or(0);
        // SAFETY: `sll` is a valid sockaddr_ll and we pass its size.
        let r = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                std::ptr::from_ref(&sll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if r != 0 {
            return Err(sock_err(
                "bind the packet socket",
                io::Error::last_os_error(),
            ));
        }
        if loopback {
            // Best effort: older kernels lack it, and pkttype filtering covers them.
            let _ = setsockopt(&fd, libc::SOL_PACKET, PACKET_IGNORE_OUTGOING, &1i32);
        }
        if promisc {
            // SAFETY: packet_mreq is plain old data; all-zero is a valid value.
            let mut mreq: libc::packet_mreq = unsafe { std::mem::zeroed() };
            mreq.mr_ifindex = sll.sll_ifindex;
            mreq.mr_type = libc::PACKET_MR_PROMISC as u16;
            setsockopt(&fd, libc::SOL_PACKET, libc::PACKET_ADD_MEMBERSHIP, &mreq)
                .map_err(|e| sock_err("enable promiscuous mode", e))?;
        }
        let rcvbuf: libc::c_int = 32 << 20;
        if setsockopt(&fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, &rcvbuf).is_err() {
            let _ = setsockopt(&fd, libc::SOL_SOCKET, libc::SO_RCVBUF, &rcvbuf);
        }
        setsockopt(&fd, libc::SOL_SOCKET, libc::SO_TIMESTAMPNS, &1i32)
            .map_err(|e| sock_err("enable packet timestamps", e))?;
        let tv = libc::timeval {
            tv_sec: 0,
            tv_usec: 100_000,
        };
        setsockopt(&fd, libc::SOL_SOCKET, libc::SO_RCVTIMEO, &tv)
            .map_err(|e| sock_err("set a receive timeout", e))?;
        Ok(Self {
            fd,
            iface: iface.into(),
            loopback,
            link,
            buf: vec![0; 65_536 + 64],
            kernel_drops: 0,
            since_stats: 0,
        })
    }

    /// The link type of the frames this source yields.
    #[must_use]
    pub fn link(&self) -> LinkType {
        self.link
    }

    /// The interface name.
    #[must_use]
    pub fn iface(&self) -> &str {
        &self.iface
    }

    fn read_drops(&mut self) {
        let mut st = TpacketStats::default();
        let mut len = std::mem::size_of::<TpacketStats>() as libc::socklen_t;
        // SAFETY: `st` and `len` are valid for writes of the sizes given.
        let r = unsafe {
            libc::getsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_PACKET,
                PACKET_STATISTICS,
                std::ptr::from_mut(&mut st).cast(),
                &mut len,
            )
        };
        if r == 0 {
            self.kernel_drops += u64::from(st.tp_drops);
        }
    }
}

impl PacketSource for LiveSource {
    fn next_frame(&mut self) -> Result<Next<'_>, CaptureError> {
        loop {
            // SAFETY: all-zero is valid for these plain C structs.
            let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            let mut cbuf = [0u64; 16];
            let mut iov = libc::iovec {
                iov_base: self.buf.as_mut_ptr().cast(),
                iov_len: self.buf.len(),
            };
            // SAFETY: as above.
            let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
            msg.msg_name = std::ptr::from_mut(&mut addr).cast();
            msg.msg_namelen = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
            msg.msg_iov = &mut iov;
            msg.msg_iovlen = 1;
            msg.msg_control = cbuf.as_mut_ptr().cast();
            msg.msg_controllen = std::mem::size_of_val(&cbuf) as _;
            // SAFETY: msg points at live buffers (addr, iov -> self.buf, cbuf) of the sizes
            // recorded in it, all outliving the call.
            let n = unsafe { libc::recvmsg(self.fd.as_raw_fd(), &mut msg, libc::MSG_TRUNC) };
            if n < 0 {
                let e = io::Error::last_os_error();
                return match e.raw_os_error() {
                    Some(libc::EAGAIN | libc::EINTR) => {
                        self.read_drops();
                        Ok(Next::Idle)
                    }
                    _ => Err(CaptureError::Socket {
                        what: "read from the packet socket",
                        iface: self.iface.clone(),
                        source: e,
                    }),
                };
            }
            self.since_stats += 1;
            if self.since_stats >= 4096 {
                self.since_stats = 0;
                self.read_drops();
            }
            if self.loopback && addr.sll_pkttype == libc::PACKET_OUTGOING {
                continue;
            }
            let mut ts = None;
            // SAFETY: CMSG_* walk the control buffer the kernel filled, bounded by
            // msg_controllen; the timespec is read unaligned.
            unsafe {
                let mut c = libc::CMSG_FIRSTHDR(&msg);
                while !c.is_null() {
                    if (*c).cmsg_level == libc::SOL_SOCKET
                        && (*c).cmsg_type == libc::SCM_TIMESTAMPNS
                    {
                        let t: libc::timespec = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast());
                        ts = Some(Duration::new(
                            u64::try_from(t.tv_sec).unwrap_or(0),
                            u32::try_from(t.tv_nsec).unwrap_or(0).min(999_999_999),
                        ));
                    }
                    c = libc::CMSG_NXTHDR(&msg, c);
                }
            }
            let ts = ts.unwrap_or_else(|| {
                SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .unwrap_or_default()
            });
            let orig_len = u32::try_from(n).unwrap_or(u32::MAX);
            let incl = usize::try_from(n).unwrap_or(0).min(self.buf.len());
            return Ok(Next::Frame(Frame {
                ts,
                data: &self.buf[..incl],
                orig_len,
                link: Some(self.link),
            }));
        }
    }

    fn dropped(&self) -> u64 {
        self.kernel_drops
    }

    fn close(&mut self) {
        self.read_drops();
    }
}

/// A pcap file being written, remembering its path for error messages.
pub struct PcapFile {
    path: std::path::PathBuf,
    w: PcapWriter<io::BufWriter<std::fs::File>>,
}

impl PcapFile {
    /// Create `path` for frames of `link`.
    ///
    /// # Errors
    /// [`CaptureError::Write`].
    pub fn create(path: &Path, link: LinkType) -> Result<Self, CaptureError> {
        let err = |source| CaptureError::Write {
            path: path.to_path_buf(),
            source,
        };
        let f = std::fs::File::create(path).map_err(err)?;
        let w = PcapWriter::new(io::BufWriter::new(f), link, 262_144).map_err(err)?;
        Ok(Self {
            path: path.to_path_buf(),
            w,
        })
    }

    /// Append a frame.
    ///
    /// # Errors
    /// [`CaptureError::Write`].
    pub fn write(&mut self, f: &Frame<'_>) -> Result<(), CaptureError> {
        self.w
            .write(f.ts, f.data, f.orig_len)
            .map_err(|source| CaptureError::Write {
                path: self.path.clone(),
                source,
            })
    }

    /// Flush to disk.
    ///
    /// # Errors
    /// [`CaptureError::Write`].
    pub fn flush(&mut self) -> Result<(), CaptureError> {
        self.w.flush().map_err(|source| CaptureError::Write {
            path: self.path.clone(),
            source,
        })
    }
}

/// What [`watch`] reports besides events.
pub trait WatchSink {
    /// A packet classification or flow summary, as soon as it is known.
    fn event(&mut self, e: &Event);
    /// Called about once a second (wall clock) with the analyzer, for refreshing tables.
    fn tick(&mut self, _a: &Analyzer) {}
}

/// Options for [`watch`].
#[derive(Debug, Clone, Default)]
pub struct WatchOptions {
    pub filter: Filter,
    /// Stop by itself after this long.
    pub duration: Option<Duration>,
    pub tracker: TrackerConfig,
}

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
    let start = Instant::now();
    let mut last_tick = start;
    let mut out = Vec::new();
    let mut number = 0u64;
    loop {
        if stop.load(Ordering::Relaxed) || opts.duration.is_some_and(|d| start.elapsed() >= d) {
            break;
        }
        match source.next_frame()? {
            Next::Frame(f) => {
                number += 1;
                if let Some(t) = tap.as_deref_mut() {
                    t.write(&f)?;
                }
                a.frame(&f, number, &mut out);
            }
            Next::Idle => {
                let now = SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .unwrap_or_default();
                a.tracker.expire(now, &mut out);
            }
            Next::End => break,
        }
        for e in out.drain(..) {
            sink.event(&e);
        }
        if last_tick.elapsed() >= Duration::from_secs(1) {
            last_tick = Instant::now();
            if let Some(t) = tap.as_deref_mut() {
                t.flush()?;
            }
            a.sync_stats();
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
