//! Live TCP sockets and their timers through the sock_diag netlink interface
//! (`NETLINK_SOCK_DIAG`, `SOCK_DIAG_BY_FAMILY`, `inet_diag_req_v2`): what `ss -tno` shows.
//!
//! One dump request per address family (IPv4, IPv6) asks the kernel for every TCP socket
//! whose state is in a bitmask and, optionally, whose source or destination port matches
//! (an `INET_DIAG_REQ_BYTECODE` filter, so filtering happens in the kernel). Each answer is
//! an `inet_diag_msg` (addresses, state, the pending timer, its expiry and counter, uid,
//! inode) followed by attributes; `INET_DIAG_INFO` carries the socket's `struct tcp_info`,
//! read with [`TcpInfo::parse`]. No privilege is needed.
//!
//! The reply parser is bounds-checked throughout: a short, truncated or odd reply yields an
//! error or is skipped, never a panic.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::time::Duration;

use netlink_sys::{protocols::NETLINK_SOCK_DIAG, Socket, SocketAddr as NlAddr};

pub use crate::addr::AddrMatch;
use crate::error::{Error, Result};
use crate::info::{state_name, TcpInfo};

// linux/netlink.h
const NLMSG_HDRLEN: usize = 16;
const NLMSG_NOOP: u16 = 1;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLMSG_OVERRUN: u16 = 4;
const NLM_F_REQUEST: u16 = 0x01;
const NLM_F_DUMP: u16 = 0x100 | 0x200; // NLM_F_ROOT | NLM_F_MATCH
                                       // linux/sock_diag.h, linux/inet_diag.h
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const INET_DIAG_REQ_BYTECODE: u16 = 1;
const INET_DIAG_INFO: u16 = 2;
const INET_DIAG_BC_JMP: u8 = 1;
const INET_DIAG_BC_S_GE: u8 = 2;
const INET_DIAG_BC_S_LE: u8 = 3;
const INET_DIAG_BC_D_GE: u8 = 4;
const INET_DIAG_BC_D_LE: u8 = 5;
/// Size of `struct inet_diag_msg`.
const DIAG_MSG_LEN: usize = 72;
/// Size of `struct inet_diag_req_v2`.
const DIAG_REQ_LEN: usize = 56;
const TCP_LISTEN: u8 = 10;
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
const IPPROTO_TCP: u8 = 6;
/// Receive buffer for one `recv`: the kernel fills dump replies up to 32 KiB per message
/// when the reader offers that much; more room costs nothing.
const RECV_BUF: usize = 64 * 1024;
/// Socket receive buffer asked for (the kernel caps it at `net.core.rmem_max`).
const SO_RCVBUF_WANTED: i32 = 4 * 1024 * 1024;

/// Which timer is pending on a socket, as sock_diag reports it (`idiag_timer`) and `ss -o`
/// names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TimerKind {
    /// No timer pending.
    None,
    /// Retransmission (or loss-probe / reordering) timer: unacknowledged data in flight.
    /// `ss` calls it `on`.
    Retransmit,
    /// Keep-alive timer (also SYN-ACK retransmission on a listener's request socket).
    Keepalive,
    /// TIME-WAIT expiry.
    TimeWait,
    /// Zero-window probe ("persist") timer: the peer advertised a zero window.
    Persist,
    /// A value this code does not know.
    Unknown(u8),
}

impl TimerKind {
    /// Decode `idiag_timer`.
    pub fn from_kernel(v: u8) -> Self {
        match v {
            0 => Self::None,
            1 => Self::Retransmit,
            2 => Self::Keepalive,
            3 => Self::TimeWait,
            4 => Self::Persist,
            other => Self::Unknown(other),
        }
    }

    /// The name `ss -o` prints: `on`, `keepalive`, `timewait`, `persist`, or `none`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Retransmit => "on",
            Self::Keepalive => "keepalive",
            Self::TimeWait => "timewait",
            Self::Persist => "persist",
            Self::Unknown(_) => "unknown",
        }
    }
}

impl std::fmt::Display for TimerKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One live TCP socket as sock_diag describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketEntry {
    /// Local address and port.
    pub local: SocketAddr,
    /// Peer address and port (unspecified address, port 0 for a listener).
    pub peer: SocketAddr,
    /// Kernel TCP state number (see [`state_name`]).
    pub state: u8,
    /// The pending timer.
    pub timer: TimerKind,
    /// Time until the timer fires (zero when none is pending).
    pub expires: Duration,
    /// The timer's counter, as `ss -o` shows it: retransmissions for [`TimerKind::Retransmit`],
    /// probes sent without an answer for [`TimerKind::Keepalive`] and [`TimerKind::Persist`].
    pub retrans: u8,
    /// Bytes queued for reading (listeners: the accept queue length).
    pub recv_q: u32,
    /// Bytes queued for sending (listeners: the accept backlog).
    pub send_q: u32,
    /// Owner's user id.
    pub uid: u32,
    /// Socket inode (0 for TIME-WAIT and request sockets).
    pub inode: u32,
    /// The kernel's cookie for this socket.
    pub cookie: u64,
    /// `struct tcp_info`, when asked for and the socket has one (not for TIME-WAIT).
    pub info: Option<TcpInfo>,
}

impl SocketEntry {
    /// The state's name as `ss` prints it (`ESTAB`, `TIME-WAIT`, ...).
    pub fn state_name(&self) -> &'static str {
        state_name(self.state)
    }

    /// Whether tcp_info's "since last ..." ages mean anything: not for a listener, which
    /// never exchanged segments, nor without tcp_info.
    fn ages(&self) -> Option<&TcpInfo> {
        self.info.as_ref().filter(|_| self.state != TCP_LISTEN)
    }

    /// Time since an ACK was last received (a keep-alive answer resets it).
    pub fn last_ack_age(&self) -> Option<Duration> {
        self.ages()
            .map(|i| Duration::from_millis(u64::from(i.last_ack_recv_ms)))
    }

    /// Time since data was last received.
    pub fn last_data_recv_age(&self) -> Option<Duration> {
        self.ages()
            .map(|i| Duration::from_millis(u64::from(i.last_data_recv_ms)))
    }

    /// Time since data was last sent.
    pub fn last_data_sent_age(&self) -> Option<Duration> {
        self.ages()
            .map(|i| Duration::from_millis(u64::from(i.last_data_sent_ms)))
    }
}

/// A set of TCP states as the kernel's bitmask (`1 << state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct States(pub u32);

/// State names accepted by [`States::parse`], with the states they stand for, in `ss`'s
/// vocabulary.
const STATE_NAMES: &[(&str, u32)] = &[
    ("established", 1 << 1),
    ("syn-sent", 1 << 2),
    ("syn-recv", (1 << 3) | (1 << 12)),
    ("fin-wait-1", 1 << 4),
    ("fin-wait-2", 1 << 5),
    ("time-wait", 1 << 6),
    ("close", 1 << 7),
    ("closed", 1 << 7),
    ("close-wait", 1 << 8),
    ("last-ack", 1 << 9),
    ("listen", 1 << 10),
    ("listening", 1 << 10),
    ("closing", 1 << 11),
    ("all", States::ALL.0),
    ("open", States::OPEN.0),
    ("connected", States::CONNECTED.0),
    ("synchronized", States::SYNCHRONIZED.0),
    ("bucket", (1 << 3) | (1 << 12) | (1 << 6)),
    ("big", States::ALL.0 & !((1 << 3) | (1 << 12) | (1 << 6))),
];

impl States {
    /// Every state.
    pub const ALL: Self = Self(0x1ffe);
    /// Every state but LISTEN and CLOSE.
    pub const CONNECTED: Self = Self(0x1ffe & !((1 << 10) | (1 << 7)));
    /// What `ss` lists when given no state: every state but LISTEN, CLOSE, TIME-WAIT and
    /// SYN-RECV (the connections a process holds).
    pub const OPEN: Self = Self(0x1ffe & !((1 << 10) | (1 << 7) | (1 << 6) | (1 << 3) | (1 << 12)));
    /// Connected and past SYN-SENT.
    pub const SYNCHRONIZED: Self = Self(0x1ffe & !((1 << 10) | (1 << 7) | (1 << 2)));

    /// The names [`States::parse`] accepts, comma-separated, for error messages and help.
    pub fn valid_names() -> String {
        STATE_NAMES
            .iter()
            .map(|(n, _)| *n)
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Parse one state name or a comma-separated list (`established,close-wait`), as `ss`
    /// names them (case-insensitive, `_` for `-` allowed). Errors name `--state`.
    pub fn parse(s: &str) -> Result<Self> {
        let mut bits = 0u32;
        for part in s.split(',') {
            let name = part.trim().to_ascii_lowercase().replace('_', "-");
            let found = STATE_NAMES
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, b)| *b)
                .ok_or_else(|| Error::unknown_name("--state", part.trim(), &Self::valid_names()))?;
            bits |= found;
        }
        Ok(Self(bits))
    }

    /// Whether kernel state number `state` is in the set.
    pub fn contains(self, state: u8) -> bool {
        state < 32 && self.0 & (1u32 << state) != 0
    }
}

impl Default for States {
    fn default() -> Self {
        Self::OPEN
    }
}

/// Parse a `--port` value: 1..=65535.
pub fn parse_port(s: &str) -> Result<u16> {
    let out_of_range = || Error::OutOfRange {
        flag: "--port".into(),
        value: s.into(),
        range: "a TCP port is 1..=65535".into(),
    };
    let n: u64 = s.trim().parse().map_err(|_| out_of_range())?;
    match u16::try_from(n) {
        Ok(p) if p != 0 => Ok(p),
        _ => Err(out_of_range()),
    }
}

/// What to ask the kernel for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Filter {
    /// Only sockets whose local or peer port is this one.
    pub port: Option<u16>,
    /// Only sockets in these states.
    pub states: States,
    /// Ask for `struct tcp_info` (`INET_DIAG_INFO`) with each socket.
    pub info: bool,
    /// Include IPv4 sockets.
    pub ipv4: bool,
    /// Include IPv6 sockets.
    pub ipv6: bool,
    /// Only sockets whose local address is in this prefix (`ss src ...`).
    pub src: Option<AddrMatch>,
    /// Only sockets whose peer address is in this prefix (`ss dst ...`).
    pub dst: Option<AddrMatch>,
}

impl Default for Filter {
    fn default() -> Self {
        Self {
            port: None,
            states: States::default(),
            info: true,
            ipv4: true,
            ipv6: true,
            src: None,
            dst: None,
        }
    }
}

impl Filter {
    /// Whether an entry passes the filter (the kernel already applied it; this double-checks
    /// answers from kernels that ignore part of a request).
    pub fn matches(&self, e: &SocketEntry) -> bool {
        self.states.contains(e.state) && self.matches_addresses(e)
    }

    /// Whether an entry's ports and addresses pass the filter, whatever its state.
    pub fn matches_addresses(&self, e: &SocketEntry) -> bool {
        self.port
            .is_none_or(|p| e.local.port() == p || e.peer.port() == p)
            && self.src.is_none_or(|m| m.matches(e.local))
            && self.dst.is_none_or(|m| m.matches(e.peer))
    }

    /// An IPv4-only prefix leaves IPv6 sockets out only through the user-space check;
    /// this narrows the families dumped instead: a `--src`/`--dst` IPv6 prefix needs no
    /// IPv4 dump (IPv4-mapped addresses live in IPv6 sockets, so an IPv4 prefix keeps both).
    #[must_use]
    pub fn narrowed(mut self) -> Self {
        let v6_only = |m: Option<AddrMatch>| m.and_then(|m| m.net).is_some_and(|n| n.is_ipv6());
        if v6_only(self.src) || v6_only(self.dst) {
            self.ipv4 = false;
        }
        self
    }
}

fn put_u16(v: &mut Vec<u8>, x: u16) {
    v.extend_from_slice(&x.to_ne_bytes());
}

fn put_u32(v: &mut Vec<u8>, x: u32) {
    v.extend_from_slice(&x.to_ne_bytes());
}

/// One bytecode operation (`struct inet_diag_bc_op`) followed by its port operand.
fn port_op(v: &mut Vec<u8>, code: u8, yes: u8, no: u16, port: u16) {
    v.push(code);
    v.push(yes);
    put_u16(v, no);
    // Operand: an op whose `no` field holds the port in host order.
    v.extend_from_slice(&[0, 0]);
    put_u16(v, port);
}

/// Kernel bytecode accepting sockets with source or destination port `port`. Each op jumps
/// by `yes` when true and `no` when false; landing exactly on the end accepts, landing 4
/// bytes past it rejects. The kernel's audit follows the `yes` chain and requires every
/// `no` target to lie on it, hence the `JMP` between the two halves (`a || b` as
/// `[a][JMP][b]`). Greater-or-equal plus less-or-equal (rather than the newer equality ops)
/// works on every kernel with sock_diag.
fn port_bytecode(port: u16) -> Vec<u8> {
    let mut v = Vec::with_capacity(36);
    port_op(&mut v, INET_DIAG_BC_S_GE, 8, 20, port); // @0:  sport >= p ? @8 : @20
    port_op(&mut v, INET_DIAG_BC_S_LE, 8, 12, port); // @8:  sport <= p ? @16 : @20
    v.extend_from_slice(&[INET_DIAG_BC_JMP, 4]); // @16: always jump to the end: accept
    put_u16(&mut v, 20);
    port_op(&mut v, INET_DIAG_BC_D_GE, 8, 20, port); // @20: dport >= p ? @28 : reject
    port_op(&mut v, INET_DIAG_BC_D_LE, 8, 12, port); // @28: dport <= p ? accept : reject
    v
}

/// Build one `SOCK_DIAG_BY_FAMILY` dump request (netlink header, `inet_diag_req_v2`, and the
/// port bytecode when filtering by port).
pub fn build_request(family: u8, filter: &Filter, seq: u32) -> Vec<u8> {
    let bc = filter.port.map(port_bytecode);
    let attr_len = bc.as_ref().map_or(0, |b| 4 + b.len());
    let total = NLMSG_HDRLEN + DIAG_REQ_LEN + attr_len;
    let mut v = Vec::with_capacity(total);
    put_u32(&mut v, u32::try_from(total).unwrap_or(u32::MAX));
    put_u16(&mut v, SOCK_DIAG_BY_FAMILY);
    put_u16(&mut v, NLM_F_REQUEST | NLM_F_DUMP);
    put_u32(&mut v, seq);
    put_u32(&mut v, 0);
    // inet_diag_req_v2
    v.push(family);
    v.push(IPPROTO_TCP);
    v.push(if filter.info {
        1 << (INET_DIAG_INFO - 1)
    } else {
        0
    });
    v.push(0);
    let mut states = filter.states.0;
    if states & (1 << 3) != 0 {
        // Request sockets (SYN-RECV) live in their own state number since Linux 4.4.
        states |= 1 << 12;
    }
    put_u32(&mut v, states);
    v.extend_from_slice(&[0u8; 48]); // inet_diag_sockid: no exact-socket lookup
    if let Some(bc) = bc {
        put_u16(&mut v, u16::try_from(4 + bc.len()).unwrap_or(u16::MAX));
        put_u16(&mut v, INET_DIAG_REQ_BYTECODE);
        v.extend_from_slice(&bc);
    }
    v
}

fn u16_ne(b: &[u8], off: usize) -> Option<u16> {
    b.get(off..off + 2)?.try_into().ok().map(u16::from_ne_bytes)
}

fn u16_be(b: &[u8], off: usize) -> Option<u16> {
    b.get(off..off + 2)?.try_into().ok().map(u16::from_be_bytes)
}

fn u32_ne(b: &[u8], off: usize) -> Option<u32> {
    b.get(off..off + 4)?.try_into().ok().map(u32::from_ne_bytes)
}

fn i32_ne(b: &[u8], off: usize) -> Option<i32> {
    b.get(off..off + 4)?.try_into().ok().map(i32::from_ne_bytes)
}

fn arr16(b: &[u8], off: usize) -> Option<[u8; 16]> {
    b.get(off..off + 16)?.try_into().ok()
}

fn parse_err(detail: impl Into<String>) -> Error {
    Error::Parse {
        what: "read a sock_diag answer".into(),
        detail: detail.into(),
    }
}

const fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// Parse the payload of one `SOCK_DIAG_BY_FAMILY` answer (`inet_diag_msg` and attributes).
pub fn parse_diag_msg(p: &[u8]) -> Result<SocketEntry> {
    if p.len() < DIAG_MSG_LEN {
        return Err(parse_err(format!(
            "inet_diag_msg is {} bytes, expected at least {DIAG_MSG_LEN}",
            p.len()
        )));
    }
    let short = || parse_err("inet_diag_msg cut short");
    let family = p[0];
    let state = p[1];
    let timer = TimerKind::from_kernel(p[2]);
    let retrans = p[3];
    let sport = u16_be(p, 4).ok_or_else(short)?;
    let dport = u16_be(p, 6).ok_or_else(short)?;
    let src = arr16(p, 8).ok_or_else(short)?;
    let dst = arr16(p, 24).ok_or_else(short)?;
    let ifindex = u32_ne(p, 40).ok_or_else(short)?;
    let cookie_lo = u32_ne(p, 44).ok_or_else(short)?;
    let cookie_hi = u32_ne(p, 48).ok_or_else(short)?;
    let expires_ms = u32_ne(p, 52).ok_or_else(short)?;
    let recv_q = u32_ne(p, 56).ok_or_else(short)?;
    let send_q = u32_ne(p, 60).ok_or_else(short)?;
    let uid = u32_ne(p, 64).ok_or_else(short)?;
    let inode = u32_ne(p, 68).ok_or_else(short)?;
    let (local, peer) = match family {
        AF_INET => {
            let a = |x: [u8; 16]| Ipv4Addr::new(x[0], x[1], x[2], x[3]);
            (
                SocketAddr::V4(SocketAddrV4::new(a(src), sport)),
                SocketAddr::V4(SocketAddrV4::new(a(dst), dport)),
            )
        }
        AF_INET6 => {
            let a = |x: [u8; 16]| {
                let ip = Ipv6Addr::from(x);
                let scope = if ip.segments()[0] & 0xffc0 == 0xfe80 {
                    ifindex
                } else {
                    0
                };
                (ip, scope)
            };
            let (s, ss) = a(src);
            let (d, ds) = a(dst);
            (
                SocketAddr::V6(SocketAddrV6::new(s, sport, 0, ss)),
                SocketAddr::V6(SocketAddrV6::new(d, dport, 0, ds)),
            )
        }
        other => return Err(parse_err(format!("unexpected address family {other}"))),
    };
    let timer_live = !matches!(timer, TimerKind::None);
    let mut entry = SocketEntry {
        local,
        peer,
        state,
        timer,
        // Older kernels report an overdue timer as a negative count of milliseconds.
        expires: if timer_live && i32::try_from(expires_ms).is_ok() {
            Duration::from_millis(u64::from(expires_ms))
        } else {
            Duration::ZERO
        },
        retrans,
        recv_q,
        send_q,
        uid,
        inode,
        cookie: u64::from(cookie_hi) << 32 | u64::from(cookie_lo),
        info: None,
    };
    // Attributes: struct nlattr { u16 len; u16 type; } + payload, each 4-aligned.
    let mut off = DIAG_MSG_LEN;
    while off + 4 <= p.len() {
        let (Some(len), Some(ty)) = (u16_ne(p, off), u16_ne(p, off + 2)) else {
            break;
        };
        let len = usize::from(len);
        if len < 4 || off + len > p.len() {
            break; // malformed tail: keep what was read
        }
        if ty & 0x3fff == INET_DIAG_INFO {
            entry.info = Some(TcpInfo::parse(&p[off + 4..off + len]));
        }
        off += align4(len);
    }
    Ok(entry)
}

/// What a chunk of dump replies ended with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chunk {
    /// More replies follow: read again.
    More,
    /// The dump is complete (`NLMSG_DONE`).
    Done,
}

/// Walk the netlink messages in one received buffer, handing each socket to `f`. Messages
/// with another sequence number (stale answers) are skipped. `NLMSG_ERROR` with a non-zero
/// code becomes an I/O error; `NLMSG_DONE` ends the dump.
pub fn parse_chunk(buf: &[u8], seq: u32, mut f: impl FnMut(SocketEntry)) -> Result<Chunk> {
    let mut off = 0usize;
    while buf.len().saturating_sub(off) >= NLMSG_HDRLEN {
        let h = &buf[off..];
        let len = u32_ne(h, 0).map_or(0, |l| usize::try_from(l).unwrap_or(usize::MAX));
        let ty = u16_ne(h, 4).unwrap_or(0);
        let mseq = u32_ne(h, 8).unwrap_or(0);
        if len < NLMSG_HDRLEN || len > h.len() {
            return Err(parse_err(format!(
                "netlink message claims {len} bytes with {} left",
                h.len()
            )));
        }
        let payload = &h[NLMSG_HDRLEN..len];
        off += align4(len);
        if mseq != seq {
            continue;
        }
        match ty {
            NLMSG_DONE => {
                // The payload is an int: a negative errno when the dump failed part way.
                if let Some(code) = i32_ne(payload, 0) {
                    if code < 0 {
                        return Err(Error::io(
                            "dump TCP sockets through sock_diag",
                            io::Error::from_raw_os_error(-code),
                        ));
                    }
                }
                return Ok(Chunk::Done);
            }
            NLMSG_ERROR => {
                let code = i32_ne(payload, 0)
                    .ok_or_else(|| parse_err("NLMSG_ERROR without an error code"))?;
                if code == 0 {
                    return Ok(Chunk::Done); // an acknowledgement
                }
                return Err(Error::io(
                    "dump TCP sockets through sock_diag",
                    io::Error::from_raw_os_error(code.saturating_neg()),
                ));
            }
            NLMSG_NOOP | NLMSG_OVERRUN => {}
            SOCK_DIAG_BY_FAMILY => f(parse_diag_msg(payload)?),
            _ => {}
        }
    }
    Ok(Chunk::More)
}

fn family_name(family: u8) -> &'static str {
    if family == AF_INET6 {
        "IPv6"
    } else {
        "IPv4"
    }
}

/// A sock_diag netlink socket, reusable for several dumps.
pub struct DiagSocket {
    sock: Socket,
    buf: Vec<u8>,
    seq: u32,
    received: usize,
}

impl DiagSocket {
    /// Open and bind a `NETLINK_SOCK_DIAG` socket with a large receive buffer.
    pub fn open() -> Result<Self> {
        let what = "open a NETLINK_SOCK_DIAG socket";
        let mut sock = Socket::new(NETLINK_SOCK_DIAG).map_err(|e| Error::io(what, e))?;
        // Best effort: a bigger buffer only saves wake-ups.
        let _ = sock.set_rx_buf_sz(SO_RCVBUF_WANTED);
        sock.bind(&NlAddr::new(0, 0))
            .map_err(|e| Error::io("bind the NETLINK_SOCK_DIAG socket", e))?;
        Ok(Self {
            sock,
            buf: Vec::with_capacity(RECV_BUF),
            seq: 0,
            received: 0,
        })
    }

    /// Dump one address family's TCP sockets matching `filter`, handing each to `f`;
    /// returns how many were handed over.
    pub fn dump(
        &mut self,
        family: u8,
        filter: &Filter,
        f: &mut impl FnMut(SocketEntry),
    ) -> Result<usize> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let req = build_request(family, filter, seq);
        let what = || format!("send the {} sock_diag dump request", family_name(family));
        let kernel = NlAddr::new(0, 0);
        let sent = self
            .sock
            .send_to(&req, &kernel, 0)
            .map_err(|e| Error::io(what(), e))?;
        if sent != req.len() {
            return Err(Error::io(
                what(),
                io::Error::new(io::ErrorKind::WriteZero, "short send"),
            ));
        }
        let mut n = 0usize;
        loop {
            self.buf.clear();
            match self.sock.recv(&mut self.buf, 0) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    return Err(Error::io(
                        format!("read the {} sock_diag dump", family_name(family)),
                        e,
                    ))
                }
            }
            if self.buf.is_empty() {
                return Err(parse_err("the kernel closed the dump without NLMSG_DONE"));
            }
            let received = &mut self.received;
            let chunk = parse_chunk(&self.buf, seq, |e| {
                *received += 1;
                if filter.matches(&e) {
                    n += 1;
                    f(e);
                }
            })?;
            if chunk == Chunk::Done {
                return Ok(n);
            }
        }
    }

    /// How many sockets the kernel has sent over this socket's lifetime, before the
    /// user-space double-check of the filter (shows that the kernel did the filtering).
    pub fn received(&self) -> usize {
        self.received
    }

    /// Dump every family `filter` asks for, handing each socket to `f`.
    pub fn visit(&mut self, filter: &Filter, mut f: impl FnMut(SocketEntry)) -> Result<usize> {
        let mut n = 0;
        if filter.ipv4 {
            n += self.dump(AF_INET, filter, &mut f)?;
        }
        if filter.ipv6 {
            n += self.dump_ipv6(filter, &mut f)?;
        }
        Ok(n)
    }

    /// The IPv6 dump; a kernel without IPv6 has no IPv6 sockets to show.
    fn dump_ipv6(&mut self, filter: &Filter, f: &mut impl FnMut(SocketEntry)) -> Result<usize> {
        match self.dump(AF_INET6, filter, f) {
            Err(Error::Io { source, .. })
                if matches!(
                    source.raw_os_error(),
                    Some(libc::ENOENT | libc::EAFNOSUPPORT)
                ) =>
            {
                Ok(0)
            }
            r => r,
        }
    }
}

/// Stream the live TCP sockets matching `filter` to `f` without collecting them (IPv4
/// first); returns how many there were.
///
/// Each family's dump walks the kernel's whole TCP socket table, so when both are asked for
/// the IPv6 dump runs on a second thread while IPv4 sockets stream to `f`; its (usually few)
/// sockets are handed over afterwards.
pub fn visit(filter: &Filter, mut f: impl FnMut(SocketEntry)) -> Result<usize> {
    if !(filter.ipv4 && filter.ipv6) {
        return DiagSocket::open()?.visit(filter, f);
    }
    std::thread::scope(|scope| {
        let v6 = scope.spawn(|| -> Result<Vec<SocketEntry>> {
            let mut v = Vec::new();
            DiagSocket::open()?.dump_ipv6(filter, &mut |e| v.push(e))?;
            Ok(v)
        });
        let v4 = DiagSocket::open().and_then(|mut d| d.dump(AF_INET, filter, &mut f));
        let v6 = v6.join().unwrap_or_else(|_| {
            Err(Error::Parse {
                what: "dump IPv6 TCP sockets".into(),
                detail: "the dump thread panicked".into(),
            })
        });
        let (n4, v6) = (v4?, v6?);
        let n6 = v6.len();
        v6.into_iter().for_each(&mut f);
        Ok(n4 + n6)
    })
}

/// The live TCP sockets matching `filter`, IPv4 first, in the kernel's order.
pub fn list(filter: &Filter) -> Result<Vec<SocketEntry>> {
    let mut v = Vec::new();
    visit(filter, |e| v.push(e))?;
    Ok(v)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn diag_msg(family: u8, state: u8, timer: u8, sport: u16, dport: u16) -> Vec<u8> {
        let mut p = vec![family, state, timer, 3];
        p.extend_from_slice(&sport.to_be_bytes());
        p.extend_from_slice(&dport.to_be_bytes());
        let mut src = [0u8; 16];
        let mut dst = [0u8; 16];
        if family == AF_INET {
            src[..4].copy_from_slice(&[127, 0, 0, 1]);
            dst[..4].copy_from_slice(&[127, 0, 0, 2]);
        } else {
            src[15] = 1;
            dst[15] = 1;
        }
        p.extend_from_slice(&src);
        p.extend_from_slice(&dst);
        p.extend_from_slice(&0u32.to_ne_bytes()); // if
        p.extend_from_slice(&7u32.to_ne_bytes()); // cookie lo
        p.extend_from_slice(&1u32.to_ne_bytes()); // cookie hi
        p.extend_from_slice(&830u32.to_ne_bytes()); // expires ms
        p.extend_from_slice(&0u32.to_ne_bytes());
        p.extend_from_slice(&0u32.to_ne_bytes());
        p.extend_from_slice(&1000u32.to_ne_bytes()); // uid
        p.extend_from_slice(&4242u32.to_ne_bytes()); // inode
        assert_eq!(p.len(), DIAG_MSG_LEN);
        p
    }

    fn with_info(mut p: Vec<u8>, probes: u8, last_ack_ms: u32) -> Vec<u8> {
        let mut info = vec![0u8; 232];
        info[0] = 1;
        info[3] = probes;
        info[56..60].copy_from_slice(&last_ack_ms.to_ne_bytes());
        put_u16(&mut p, u16::try_from(4 + info.len()).unwrap());
        put_u16(&mut p, INET_DIAG_INFO);
        p.extend_from_slice(&info);
        p
    }

    fn nlmsg(ty: u16, seq: u32, payload: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        put_u32(&mut v, u32::try_from(NLMSG_HDRLEN + payload.len()).unwrap());
        put_u16(&mut v, ty);
        put_u16(&mut v, 2); // NLM_F_MULTI
        put_u32(&mut v, seq);
        put_u32(&mut v, 0);
        v.extend_from_slice(payload);
        while v.len() % 4 != 0 {
            v.push(0);
        }
        v
    }

    #[test]
    fn diag_msg_fields_and_tcp_info_attribute_are_read() {
        let p = with_info(diag_msg(AF_INET, 1, 2, 40000, 8080), 0, 640);
        let e = parse_diag_msg(&p).unwrap();
        assert_eq!(e.local, "127.0.0.1:40000".parse().unwrap());
        assert_eq!(e.peer, "127.0.0.2:8080".parse().unwrap());
        assert_eq!(e.state_name(), "ESTAB");
        assert_eq!(e.timer, TimerKind::Keepalive);
        assert_eq!(e.expires, Duration::from_millis(830));
        assert_eq!(e.retrans, 3);
        assert_eq!((e.uid, e.inode), (1000, 4242));
        assert_eq!(e.cookie, (1 << 32) | 7);
        let info = e.info.unwrap();
        assert_eq!(info.last_ack_recv_ms, 640);
        assert_eq!(info.probes, 0);
    }

    #[test]
    fn ipv6_addresses_are_read() {
        let e = parse_diag_msg(&diag_msg(AF_INET6, 10, 0, 443, 0)).unwrap();
        assert_eq!(e.local, "[::1]:443".parse().unwrap());
        assert_eq!(e.state_name(), "LISTEN");
        assert_eq!(e.timer, TimerKind::None);
        assert_eq!(e.expires, Duration::ZERO, "no timer, no expiry");
        assert!(e.info.is_none());
    }

    #[test]
    fn short_and_odd_messages_are_errors_or_skipped_never_panics() {
        assert!(parse_diag_msg(&[]).is_err());
        assert!(parse_diag_msg(&[2; 71]).is_err());
        assert!(parse_diag_msg(&diag_msg(99, 1, 0, 1, 1)).is_err());
        // An attribute claiming more bytes than are left is ignored.
        let mut p = diag_msg(AF_INET, 1, 0, 1, 2);
        put_u16(&mut p, 500);
        put_u16(&mut p, INET_DIAG_INFO);
        p.extend_from_slice(&[0; 8]);
        assert!(parse_diag_msg(&p).unwrap().info.is_none());
        // Every prefix of a valid chunk and arbitrary bytes: no panic.
        let mut chunk = nlmsg(
            SOCK_DIAG_BY_FAMILY,
            5,
            &with_info(diag_msg(AF_INET, 1, 1, 1, 2), 1, 2),
        );
        chunk.extend(nlmsg(NLMSG_DONE, 5, &0u32.to_ne_bytes()));
        for n in 0..chunk.len() {
            let _ = parse_chunk(&chunk[..n], 5, |_| {});
        }
        let mut x = 0x1234_5678u32;
        for _ in 0..2000 {
            let bytes: Vec<u8> = (0..(x % 300))
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    x.to_le_bytes()[0]
                })
                .collect();
            let _ = parse_chunk(&bytes, 5, |_| {});
            let _ = parse_diag_msg(&bytes);
        }
    }

    #[test]
    fn multipart_chunks_then_done() {
        let a = nlmsg(SOCK_DIAG_BY_FAMILY, 9, &diag_msg(AF_INET, 1, 0, 1, 2));
        let b = nlmsg(SOCK_DIAG_BY_FAMILY, 9, &diag_msg(AF_INET, 6, 3, 3, 4));
        let stale = nlmsg(SOCK_DIAG_BY_FAMILY, 8, &diag_msg(AF_INET, 1, 0, 5, 6));
        let mut first = a.clone();
        first.extend(&stale);
        let mut seen = Vec::new();
        assert_eq!(
            parse_chunk(&first, 9, |e| seen.push(e)).unwrap(),
            Chunk::More
        );
        let mut second = b;
        second.extend(nlmsg(NLMSG_DONE, 9, &0u32.to_ne_bytes()));
        second.extend(a); // after DONE: ignored
        assert_eq!(
            parse_chunk(&second, 9, |e| seen.push(e)).unwrap(),
            Chunk::Done
        );
        assert_eq!(seen.len(), 2);
        assert_eq!(seen[1].timer, TimerKind::TimeWait);
    }

    #[test]
    fn nlmsg_error_becomes_an_io_error_and_ack_ends() {
        let mut p = (-libc::EINVAL).to_ne_bytes().to_vec();
        p.extend_from_slice(&[0; 16]);
        let err = parse_chunk(&nlmsg(NLMSG_ERROR, 1, &p), 1, |_| {}).unwrap_err();
        assert_eq!(err.io_error().unwrap().raw_os_error(), Some(libc::EINVAL));
        assert!(err.to_string().contains("sock_diag"), "{err}");
        let ack = nlmsg(NLMSG_ERROR, 1, &[0; 20]);
        assert_eq!(parse_chunk(&ack, 1, |_| {}).unwrap(), Chunk::Done);
        assert!(parse_chunk(&nlmsg(NLMSG_ERROR, 1, &[]), 1, |_| {}).is_err());
        // A header claiming more than was received.
        let mut bad = nlmsg(NLMSG_DONE, 1, &[0; 4]);
        bad[0] = 200;
        assert!(parse_chunk(&bad, 1, |_| {}).is_err());
    }

    #[test]
    fn state_names_parse_like_ss_and_bad_ones_list_the_valid() {
        assert_eq!(States::parse("established").unwrap(), States(1 << 1));
        assert_eq!(
            States::parse("ESTABLISHED, close_wait").unwrap(),
            States((1 << 1) | (1 << 8))
        );
        assert!(States::parse("connected").unwrap().contains(6));
        assert!(!States::parse("connected").unwrap().contains(10));
        assert!(States::parse("all").unwrap().contains(10));
        assert!(!States::ALL.contains(40));
        let e = States::parse("estab").unwrap_err().to_string();
        assert!(
            e.contains("--state") && e.contains("estab") && e.contains("time-wait"),
            "{e}"
        );
    }

    #[test]
    fn ports_outside_1_to_65535_are_rejected() {
        assert_eq!(parse_port("8080").unwrap(), 8080);
        for bad in ["0", "65536", "-1", "http", ""] {
            let e = parse_port(bad).unwrap_err().to_string();
            assert!(e.contains("--port") && e.contains("1..=65535"), "{e}");
        }
    }

    #[test]
    fn port_bytecode_ops_end_in_accept_or_reject() {
        let bc = port_bytecode(8080);
        assert_eq!(bc.len(), 36);
        for at in [0, 8, 20, 28] {
            let yes = usize::from(bc[at + 1]);
            let no = usize::from(u16_ne(&bc, at + 2).unwrap());
            let left = bc.len() - at;
            assert!(
                yes <= left && no <= left + 4,
                "op at {at} jumps past reject"
            );
            assert_eq!(u16_ne(&bc, at + 6), Some(8080));
        }
        let req = build_request(
            AF_INET,
            &Filter {
                port: Some(1),
                ..Filter::default()
            },
            3,
        );
        assert_eq!(req.len(), NLMSG_HDRLEN + DIAG_REQ_LEN + 40);
        assert_eq!(u32_ne(&req, 0).unwrap() as usize, req.len());
    }

    #[test]
    fn live_pair_is_listed_with_port_and_state_filters() {
        for addr in ["127.0.0.1:0", "[::1]:0"] {
            let l = std::net::TcpListener::bind(addr).unwrap();
            let port = l.local_addr().unwrap().port();
            let c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
            let (_s, _) = l.accept().unwrap();
            let filter = Filter {
                port: Some(port),
                states: States::ALL,
                ..Filter::default()
            };
            let mut sock = DiagSocket::open().unwrap();
            let mut all = Vec::new();
            sock.visit(&filter, |e| all.push(e)).unwrap();
            assert_eq!(all.len(), 3, "listener, client, server: {all:?}");
            assert_eq!(sock.received(), 3, "the kernel applied the port filter");
            assert!(all
                .iter()
                .all(|e| e.local.port() == port || e.peer.port() == port));
            let client = all
                .iter()
                .find(|e| e.local == c.local_addr().unwrap())
                .unwrap();
            assert_eq!(client.peer, l.local_addr().unwrap());
            assert_eq!(client.state_name(), "ESTAB");
            assert!(client.info.is_some_and(|i| i.state == 1));
            let listen = list(&Filter {
                states: States::parse("listen").unwrap(),
                ..filter
            })
            .unwrap();
            assert_eq!(listen.len(), 1);
            assert_eq!(listen[0].local, l.local_addr().unwrap());
        }
    }
}
