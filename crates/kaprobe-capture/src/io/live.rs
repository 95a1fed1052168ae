//! Live capture from an AF_PACKET socket (Linux). The loop that feeds it to the tracker is
//! [`crate::watch`].
//!
//! On a loopback interface every packet passes the tap twice (once outgoing, once incoming):
//! the outgoing copy is dropped (PACKET_IGNORE_OUTGOING where the kernel has it, and by
//! `sll_pkttype` in any case). On other interfaces both directions are kept: a host's own
//! probes are outgoing packets.
//!
//! Cheap on busy interfaces: a classic BPF program ([`crate::io::bpf`]) keeps only TCP (and the
//! `--port`/`--host` packets when asked) and cuts each packet to its headers in the kernel;
//! packets arrive through a memory-mapped TPACKET_V3 ring (one poll per block of packets
//! instead of one system call per packet), with `recvmsg` as the fallback where the ring
//! cannot be set up. The kernel's drop counter (PACKET_STATISTICS) is read once per block.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::analyze::Filter;
use crate::error::CaptureError;
use crate::io::bpf::{self, Framing, DEFAULT_SNAPLEN};
use crate::io::ebpf::KernelFlows;
use crate::io::source::{Frame, Next, PacketSource};
use crate::wire::packet::LinkType;

// The watch loop and the pcap file writer used to live here: their old paths still work.
pub use crate::io::writer::PcapFile;
pub use crate::watch::{capture_loopback, watch, LoopbackCapture, WatchOptions, WatchSink};

const PACKET_IGNORE_OUTGOING: libc::c_int = 23;
const PACKET_STATISTICS: libc::c_int = 6;
const PACKET_RX_RING: libc::c_int = 5;
const PACKET_AUXDATA: libc::c_int = 8;
const PACKET_VERSION: libc::c_int = 10;
const TPACKET_V3: libc::c_int = 2;
const TP_STATUS_USER: u32 = 1;
const TP_STATUS_KERNEL: u32 = 0;
const IFF_LOOPBACK: u32 = 0x8;
/// Ring geometry: 32 blocks of 1 MiB (about 128k header-sized packets of slack).
const RING_BLOCK: u32 = 1 << 20;
const RING_BLOCKS: u32 = 32;
/// A block is handed over after this long even when not full (ms): the live latency.
const RING_TIMEOUT_MS: u32 = 50;
/// Poll timeout: how often an idle source reports [`Next::Idle`].
const POLL_MS: libc::c_int = 100;

#[repr(C)]
#[derive(Default)]
struct TpacketStats {
    tp_packets: u32,
    tp_drops: u32,
    tp_freeze_q_cnt: u32,
}

#[repr(C)]
struct TpacketReq3 {
    block_size: u32,
    block_nr: u32,
    frame_size: u32,
    frame_nr: u32,
    retire_blk_tov: u32,
    sizeof_priv: u32,
    feature_req_word: u32,
}

/// `struct tpacket_auxdata` (recvmsg path): the length on the wire of a truncated packet.
#[repr(C)]
#[derive(Clone, Copy)]
struct Auxdata {
    tp_status: u32,
    tp_len: u32,
    tp_snaplen: u32,
    tp_mac: u16,
    tp_net: u16,
    tp_vlan_tci: u16,
    tp_vlan_tpid: u16,
}

/// Options for [`LiveSource::open_with`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LiveOptions {
    /// Put the interface in promiscuous mode.
    pub promisc: bool,
    /// Applied in the kernel where it can be (user space applies it again, exactly).
    pub filter: Filter,
    /// Bytes kept of each packet (0: whole packets).
    pub snaplen: u32,
    /// Keep per-flow state in the kernel and withhold the routine segments of quiet flows
    /// (see [`crate::io::ebpf`]); falls back on handing over every packet where the kernel
    /// does not load the program. Off when every packet must reach user space (a copy to a
    /// file).
    pub withhold: bool,
}

impl Default for LiveOptions {
    fn default() -> Self {
        Self {
            promisc: false,
            filter: Filter::default(),
            snaplen: DEFAULT_SNAPLEN,
            withhold: true,
        }
    }
}

/// The mapped TPACKET_V3 ring and where reading stands in it.
struct Ring {
    base: *mut u8,
    size: usize,
    block_size: usize,
    blocks: usize,
    /// Block being read (or waited for).
    cur: usize,
    /// Packets left in the current block, when it is ours.
    left: u32,
    /// Offset of the next packet header in the current block.
    off: usize,
    owned: bool,
}

impl Drop for Ring {
    fn drop(&mut self) {
        // SAFETY: `base`/`size` are exactly what mmap returned; nothing borrows the ring
        // once its owner is dropped.
        unsafe {
            libc::munmap(self.base.cast(), self.size);
        }
    }
}

impl Ring {
    fn block(&self, i: usize) -> *mut u8 {
        // SAFETY: i < blocks, so the offset stays inside the mapping.
        unsafe { self.base.add(i * self.block_size) }
    }

    fn status(&self, i: usize) -> &std::sync::atomic::AtomicU32 {
        // SAFETY: block_status is the first u32 of the block's header (struct
        // tpacket_hdr_v1 at offset 8 of tpacket_block_desc), 4-aligned in a page-aligned
        // block; the kernel and we hand it back and forth, so it is read atomically.
        unsafe { &*self.block(i).add(8).cast::<std::sync::atomic::AtomicU32>() }
    }

    fn header_u32(&self, i: usize, at: usize) -> u32 {
        // SAFETY: `at` is a field offset inside the block descriptor (< 48 bytes).
        unsafe { std::ptr::read_volatile(self.block(i).add(at).cast::<u32>()) }
    }
}

enum Rx {
    Ring(Ring),
    Recv(Vec<u8>),
}

/// A live AF_PACKET capture on one interface.
pub struct LiveSource {
    fd: OwnedFd,
    iface: String,
    loopback: bool,
    link: LinkType,
    rx: Rx,
    snaplen: u32,
    kernel_drops: u64,
    kernel_packets: u64,
    since_stats: u32,
    /// The per-flow records of the eBPF filter, when it is the one attached.
    kernel_flows: Option<Arc<KernelFlows>>,
    /// Why per-flow state in the kernel was asked for but is not used.
    withhold_error: Option<String>,
}

// SAFETY: the ring mapping is owned by the source alone and only touched through `&mut self`.
unsafe impl Send for LiveSource {}

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
        Self::open_with(
            iface,
            &LiveOptions {
                promisc,
                ..LiveOptions::default()
            },
        )
    }

    /// Open `iface` with a kernel filter and snap length (see [`LiveOptions`]).
    ///
    /// # Errors
    /// As [`LiveSource::open`].
    pub fn open_with(iface: &str, o: &LiveOptions) -> Result<Self, CaptureError> {
        Self::open_filtered(iface, o, None)
    }

    /// As [`LiveSource::open_with`], with a filter expression compiled into the kernel
    /// filter after the built-in conditions (see [`crate::filter`]). The filter is on
    /// before the socket is bound, so no packet the expression refuses is ever queued.
    ///
    /// # Errors
    /// As [`LiveSource::open`]; [`CaptureError::Socket`] when the program does not fit BPF.
    pub fn open_filtered(
        iface: &str,
        o: &LiveOptions,
        expr: Option<&crate::filter::Expression>,
    ) -> Result<Self, CaptureError> {
        let promisc = o.promisc;
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
        // The filter goes on before bind, so no unfiltered packet is ever queued.
        let framing = if kind == libc::SOCK_RAW {
            Framing::Ethernet
        } else {
            Framing::Ip
        };
        // 0: whole packets (loopback and GRO/GSO packets may exceed 64 KiB).
        let snaplen = if o.snaplen == 0 { 262_144 } else { o.snaplen };
        let prog = bpf::program_checked(framing, &o.filter, expr.map(|e| &e.expr), snaplen)
            .map_err(|what| {
                sock_err(
                    "compile the filter expression",
                    io::Error::new(io::ErrorKind::InvalidInput, what),
                )
            })?;
        let fprog = libc::sock_fprog {
            len: u16::try_from(prog.len()).unwrap_or(u16::MAX),
            filter: prog.as_ptr().cast_mut().cast(),
        };
        let mut withhold_error = None;
        let kernel_flows = if o.withhold {
            match KernelFlows::load(framing, &prog).and_then(|k| k.attach(&fd).map(|()| k)) {
                Ok(k) => Some(Arc::new(k)),
                Err(e) => {
                    withhold_error = Some(if e.kind() == io::ErrorKind::PermissionDenied {
                        format!("{e}: loading eBPF needs CAP_BPF, as root has")
                    } else {
                        e.to_string()
                    });
                    None
                }
            }
        } else {
            None
        };
        if kernel_flows.is_none() {
            setsockopt(&fd, libc::SOL_SOCKET, libc::SO_ATTACH_FILTER, &fprog)
                .map_err(|e| sock_err("attach the packet filter", e))?;
        }
        let ring = setup_ring(&fd, snaplen);
        if ring.is_none() {
            // Fallback path: the wire length of truncated packets comes as ancillary data.
            setsockopt(&fd, libc::SOL_PACKET, PACKET_AUXDATA, &1i32)
                .map_err(|e| sock_err("enable packet auxiliary data", e))?;
        }
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
        // A fresh statistics window: counts start at this open.
        let mut src = Self {
            fd,
            iface: iface.into(),
            loopback,
            link,
            rx: match ring {
                Some(r) => Rx::Ring(r),
                None => Rx::Recv(vec![0; 65_536 + 64]),
            },
            snaplen,
            kernel_drops: 0,
            kernel_packets: 0,
            since_stats: 0,
            kernel_flows,
            withhold_error,
        };
        src.read_drops();
        src.kernel_drops = 0;
        src.kernel_packets = 0;
        Ok(src)
    }

    /// Bytes kept of each packet.
    #[must_use]
    pub fn snaplen(&self) -> u32 {
        self.snaplen
    }

    /// Why the kernel keeps no per-flow state although it was asked to (it refused the eBPF
    /// program: no CAP_BPF, an old kernel), or `None`.
    #[must_use]
    pub fn withhold_error(&self) -> Option<&str> {
        self.withhold_error.as_deref()
    }

    /// True when packets come through the memory-mapped ring (false: recvmsg fallback).
    #[must_use]
    pub fn uses_ring(&self) -> bool {
        matches!(self.rx, Rx::Ring(_))
    }

    /// Packets the kernel passed the filter (kept or dropped) since open.
    #[must_use]
    pub fn kernel_packets(&self) -> u64 {
        self.kernel_packets
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
        if let Some((drops, packets)) = read_stats(&self.fd) {
            self.kernel_drops += drops;
            self.kernel_packets += packets;
        }
    }

    #[inline]
    fn next_ring(&mut self) -> Result<Next<'_>, CaptureError> {
        let Self {
            fd,
            iface,
            loopback,
            link,
            rx,
            kernel_drops,
            kernel_packets,
            ..
        } = self;
        let Rx::Ring(ring) = rx else {
            return Ok(Next::End);
        };
        let mut stats = |fd: &OwnedFd| {
            if let Some((d, p)) = read_stats(fd) {
                *kernel_drops += d;
                *kernel_packets += p;
            }
        };
        loop {
            if ring.owned {
                if ring.left == 0 {
                    ring.status(ring.cur)
                        .store(TP_STATUS_KERNEL, Ordering::Release);
                    ring.owned = false;
                    ring.cur = (ring.cur + 1) % ring.blocks;
                    stats(fd);
                    continue;
                }
                ring.left -= 1;
                let bs = ring.block_size;
                let at = ring.off;
                // A packet header is 48 bytes, then its sockaddr_ll (20) at 48.
                if at.checked_add(68).is_none_or(|e| e > bs) {
                    ring.left = 0;
                    continue;
                }
                let blk = ring.block(ring.cur);
                // SAFETY: [at, at + 68) lies inside the block (checked above); the kernel
                // wrote this header before handing the block over (Acquire on status).
                let (next, sec, nsec, caplen, wire, mac, pkttype) = unsafe {
                    let h = blk.add(at);
                    let u = |o: usize| std::ptr::read_unaligned(h.add(o).cast::<u32>());
                    let mac = std::ptr::read_unaligned(h.add(24).cast::<u16>());
                    let pkttype = *h.add(48 + 10);
                    (u(0), u(4), u(8), u(12), u(16), mac, pkttype)
                };
                ring.off = if next == 0 {
                    ring.left = 0;
                    bs
                } else {
                    at + next as usize
                };
                if *loopback && pkttype == libc::PACKET_OUTGOING {
                    continue;
                }
                let start = at + usize::from(mac);
                let len = caplen as usize;
                if start.checked_add(len).is_none_or(|e| e > bs) {
                    continue;
                }
                // SAFETY: [start, start + len) is inside the block, which stays ours (not
                // returned to the kernel) until the next call, which needs `&mut self`.
                let data = unsafe { std::slice::from_raw_parts(blk.add(start), len) };
                return Ok(Next::Frame(Frame {
                    ts: Duration::new(u64::from(sec), nsec.min(999_999_999)),
                    data,
                    orig_len: wire.max(caplen),
                    link: Some(*link),
                }));
            }
            if ring.status(ring.cur).load(Ordering::Acquire) & TP_STATUS_USER != 0 {
                ring.owned = true;
                ring.left = ring.header_u32(ring.cur, 12);
                ring.off = ring.header_u32(ring.cur, 16) as usize;
                continue;
            }
            if wait_for_block(fd, iface, ring)? {
                continue;
            }
            stats(fd);
            return Ok(Next::Idle);
        }
    }
}

/// Wait (up to `POLL_MS`) for the kernel to hand over the ring's current block: true when it
/// has, false on a timeout or a signal. Out of line: a busy capture rarely waits.
#[cold]
#[inline(never)]
fn wait_for_block(fd: &OwnedFd, iface: &str, ring: &Ring) -> Result<bool, CaptureError> {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN | libc::POLLERR,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    let n = unsafe { libc::poll(&mut pfd, 1, POLL_MS) };
    if n < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EINTR) {
            return Ok(false);
        }
        return Err(CaptureError::Socket {
            what: "wait for packets",
            iface: iface.to_string(),
            source: e,
        });
    }
    Ok(ring.status(ring.cur).load(Ordering::Acquire) & TP_STATUS_USER != 0)
}

/// Read (and reset) the kernel's counters: packets dropped, packets passed to the socket.
fn read_stats(fd: &OwnedFd) -> Option<(u64, u64)> {
    let mut st = TpacketStats::default();
    let mut len = std::mem::size_of::<TpacketStats>() as libc::socklen_t;
    // SAFETY: `st` and `len` are valid for writes of the sizes given.
    let r = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_PACKET,
            PACKET_STATISTICS,
            std::ptr::from_mut(&mut st).cast(),
            &mut len,
        )
    };
    (r == 0).then(|| (u64::from(st.tp_drops), u64::from(st.tp_packets)))
}

/// Map a TPACKET_V3 receive ring on `fd` (before bind); `None` where the kernel refuses.
fn setup_ring(fd: &OwnedFd, snaplen: u32) -> Option<Ring> {
    setsockopt(fd, libc::SOL_PACKET, PACKET_VERSION, &TPACKET_V3).ok()?;
    // A frame slot must hold the largest packet the filter lets through.
    let frame = (snaplen + 128).next_power_of_two().clamp(2048, RING_BLOCK);
    let block = RING_BLOCK.max(frame);
    let req = TpacketReq3 {
        block_size: block,
        block_nr: RING_BLOCKS,
        frame_size: frame,
        frame_nr: (block / frame) * RING_BLOCKS,
        retire_blk_tov: RING_TIMEOUT_MS,
        sizeof_priv: 0,
        feature_req_word: 0,
    };
    if setsockopt(fd, libc::SOL_PACKET, PACKET_RX_RING, &req).is_err() {
        let _ = setsockopt(fd, libc::SOL_PACKET, PACKET_VERSION, &0i32);
        return None;
    }
    let size = block as usize * RING_BLOCKS as usize;
    // SAFETY: mapping the ring the kernel just allocated for this socket, at its size.
    let base = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            size,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_LOCKED,
            fd.as_raw_fd(),
            0,
        )
    };
    let base = if base == libc::MAP_FAILED {
        // MAP_LOCKED needs RLIMIT_MEMLOCK room; the ring works unlocked too.
        // SAFETY: as above.
        let b = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                size,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if b == libc::MAP_FAILED {
            return None;
        }
        b
    } else {
        base
    };
    Some(Ring {
        base: base.cast(),
        size,
        block_size: block as usize,
        blocks: RING_BLOCKS as usize,
        cur: 0,
        left: 0,
        off: 0,
        owned: false,
    })
}

impl PacketSource for LiveSource {
    fn kernel_flows(&self) -> Option<Arc<KernelFlows>> {
        self.kernel_flows.clone()
    }

    #[inline]
    fn next_frame(&mut self) -> Result<Next<'_>, CaptureError> {
        if let Rx::Ring(_) = self.rx {
            return self.next_ring();
        }
        let Rx::Recv(buf) = &mut self.rx else {
            return Ok(Next::End);
        };
        loop {
            // SAFETY: all-zero is valid for these plain C structs.
            let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            let mut cbuf = [0u64; 16];
            let mut iov = libc::iovec {
                iov_base: buf.as_mut_ptr().cast(),
                iov_len: buf.len(),
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
                        if let Some((d, p)) = read_stats(&self.fd) {
                            self.kernel_drops += d;
                            self.kernel_packets += p;
                        }
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
                if let Some((d, p)) = read_stats(&self.fd) {
                    self.kernel_drops += d;
                    self.kernel_packets += p;
                }
            }
            if self.loopback && addr.sll_pkttype == libc::PACKET_OUTGOING {
                continue;
            }
            let mut ts = None;
            let mut wire = None;
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
                    if (*c).cmsg_level == libc::SOL_PACKET && (*c).cmsg_type == PACKET_AUXDATA {
                        let a: Auxdata = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast());
                        wire = Some(a.tp_len);
                    }
                    c = libc::CMSG_NXTHDR(&msg, c);
                }
            }
            let ts = ts.unwrap_or_else(|| {
                SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .unwrap_or_default()
            });
            // With a snap length, MSG_TRUNC reports the cut length: the wire length comes
            // from the auxiliary data.
            let cut = u32::try_from(n).unwrap_or(u32::MAX);
            let orig_len = wire.unwrap_or(cut).max(cut);
            let incl = usize::try_from(n).unwrap_or(0).min(buf.len());
            return Ok(Next::Frame(Frame {
                ts,
                data: &buf[..incl],
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
