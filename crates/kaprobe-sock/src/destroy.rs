//! Ending sockets and hearing them end, through sock_diag:
//!
//! - [`kill`]: `SOCK_DESTROY` for one socket found by a dump, the way `ss -K` does it. The
//!   kernel aborts the connection as `tcp_abort` does: the peer gets a RST, the owner's next
//!   call fails with ECONNABORTED. The request names the socket by its addresses and the
//!   kernel's cookie, so a socket that closed and was replaced by another with the same
//!   addresses in between is not touched (the kernel answers ENOENT). Needs CAP_NET_ADMIN and
//!   a kernel built with `CONFIG_INET_DIAG_DESTROY`.
//! - [`Closes`]: the kernel's multicast groups for destroyed TCP sockets
//!   (`SKNLGRP_INET_TCP_DESTROY`, `SKNLGRP_INET6_TCP_DESTROY`), what `ss -E` listens to. Each
//!   message is the socket's last `inet_diag_msg` and `tcp_info`; [`Ending`] reads from the
//!   counters how the connection ended. Needs CAP_NET_ADMIN.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use netlink_sys::{protocols::NETLINK_SOCK_DIAG, Socket, SocketAddr as NlAddr};

use crate::diag::{parse_diag_msg, SocketEntry};
use crate::error::{Error, Result};

const NLMSG_HDRLEN: usize = 16;
const NLMSG_ERROR: u16 = 2;
const NLMSG_OVERRUN: u16 = 4;
const NLM_F_REQUEST: u16 = 0x01;
const NLM_F_ACK: u16 = 0x04;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const SOCK_DESTROY: u16 = 21;
const IPPROTO_TCP: u8 = 6;
/// `SKNLGRP_INET_TCP_DESTROY` and `SKNLGRP_INET6_TCP_DESTROY` (linux/sock_diag.h), as
/// the bind(2) group mask: group N is bit N-1.
const GROUPS_TCP_DESTROY: u32 = 0b101;

fn put_u16(v: &mut Vec<u8>, x: u16) {
    v.extend_from_slice(&x.to_ne_bytes());
}

fn put_u32(v: &mut Vec<u8>, x: u32) {
    v.extend_from_slice(&x.to_ne_bytes());
}

fn addr_bytes(a: SocketAddr) -> [u8; 16] {
    let mut b = [0u8; 16];
    match a {
        SocketAddr::V4(a) => b[..4].copy_from_slice(&a.ip().octets()),
        SocketAddr::V6(a) => b = a.ip().octets(),
    }
    b
}

/// The `SOCK_DESTROY` request for `e` (netlink header and `inet_diag_req_v2` naming the
/// socket by family, ports, addresses, interface and cookie).
pub fn destroy_request(e: &SocketEntry, seq: u32) -> Vec<u8> {
    let total = NLMSG_HDRLEN + 56;
    let mut v = Vec::with_capacity(total);
    put_u32(&mut v, u32::try_from(total).unwrap_or(u32::MAX));
    put_u16(&mut v, SOCK_DESTROY);
    put_u16(&mut v, NLM_F_REQUEST | NLM_F_ACK);
    put_u32(&mut v, seq);
    put_u32(&mut v, 0);
    let family = if e.local.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    v.push(u8::try_from(family).unwrap_or(2));
    v.push(IPPROTO_TCP);
    v.push(0);
    v.push(0);
    put_u32(&mut v, u32::MAX); // every state
    v.extend_from_slice(&e.local.port().to_be_bytes());
    v.extend_from_slice(&e.peer.port().to_be_bytes());
    v.extend_from_slice(&addr_bytes(e.local));
    v.extend_from_slice(&addr_bytes(e.peer));
    let ifindex = match e.local {
        SocketAddr::V6(a) => a.scope_id(),
        SocketAddr::V4(_) => 0,
    };
    put_u32(&mut v, ifindex);
    // The cookie is two u32 halves, low first.
    put_u32(&mut v, u32::try_from(e.cookie & 0xffff_ffff).unwrap_or(0));
    put_u32(&mut v, u32::try_from(e.cookie >> 32).unwrap_or(0));
    v
}

/// Read the acknowledgement of request `seq`: `Ok` for error code 0, the errno otherwise.
fn read_ack(buf: &[u8], seq: u32) -> Option<std::result::Result<(), io::Error>> {
    let mut off = 0;
    while buf.len().saturating_sub(off) >= NLMSG_HDRLEN {
        let h = &buf[off..];
        let len = h
            .get(0..4)
            .and_then(|b| b.try_into().ok())
            .map_or(0, u32::from_ne_bytes);
        let len = usize::try_from(len).unwrap_or(0);
        let ty = h
            .get(4..6)
            .and_then(|b| b.try_into().ok())
            .map_or(0, u16::from_ne_bytes);
        let mseq = h
            .get(8..12)
            .and_then(|b| b.try_into().ok())
            .map_or(0, u32::from_ne_bytes);
        if len < NLMSG_HDRLEN || len > h.len() {
            return None;
        }
        if ty == NLMSG_ERROR && mseq == seq {
            let code = h
                .get(16..20)
                .and_then(|b| b.try_into().ok())
                .map(i32::from_ne_bytes)?;
            return Some(if code == 0 {
                Ok(())
            } else {
                Err(io::Error::from_raw_os_error(code.saturating_neg()))
            });
        }
        off += (len + 3) & !3;
    }
    None
}

/// A sock_diag socket for `SOCK_DESTROY` requests.
pub struct Killer {
    sock: Socket,
    seq: u32,
    buf: Vec<u8>,
}

impl Killer {
    /// Open the netlink socket (in the calling thread's network namespace).
    pub fn open() -> Result<Self> {
        let mut sock = Socket::new(NETLINK_SOCK_DIAG)
            .map_err(|e| Error::io("open a NETLINK_SOCK_DIAG socket", e))?;
        sock.bind(&NlAddr::new(0, 0))
            .map_err(|e| Error::io("bind the NETLINK_SOCK_DIAG socket", e))?;
        Ok(Self {
            sock,
            seq: 0,
            buf: Vec::with_capacity(8192),
        })
    }

    /// Abort socket `e` (as found by a dump): the peer gets a RST. Errors: EPERM without
    /// CAP_NET_ADMIN, EOPNOTSUPP on a kernel without `CONFIG_INET_DIAG_DESTROY`, ENOENT when
    /// the socket is already gone.
    pub fn kill(&mut self, e: &SocketEntry) -> Result<()> {
        self.seq = self.seq.wrapping_add(1);
        let req = destroy_request(e, self.seq);
        let what = || format!("kill the socket {} -> {} (SOCK_DESTROY)", e.local, e.peer);
        self.sock
            .send_to(&req, &NlAddr::new(0, 0), 0)
            .map_err(|err| Error::io(what(), err))?;
        loop {
            self.buf.clear();
            match self.sock.recv(&mut self.buf, 0) {
                Ok(_) => {}
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) => return Err(Error::io(what(), err)),
            }
            if self.buf.is_empty() {
                return Err(Error::io(
                    what(),
                    io::Error::new(io::ErrorKind::UnexpectedEof, "no answer from the kernel"),
                ));
            }
            if let Some(r) = read_ack(&self.buf, self.seq) {
                return r.map_err(|err| Error::io(what(), err));
            }
        }
    }
}

/// Kill one socket with a fresh netlink socket (see [`Killer::kill`]).
pub fn kill(e: &SocketEntry) -> Result<()> {
    Killer::open()?.kill(e)
}

/// How a connection ended, read from its last `tcp_info` when the kernel destroyed it.
///
/// The kernel keeps no record of whether the last segment from the peer was a FIN or a RST;
/// what it does keep tells these apart:
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Ending {
    /// Keep-alive probes went unanswered (`tcpi_probes` > 0): the kernel gave up on a silent
    /// peer (ETIMEDOUT; it sent a RST).
    KeepaliveTimeout,
    /// Data was being retransmitted (`tcpi_retransmits` > 0 or the timer backed off) when it
    /// ended: TCP_USER_TIMEOUT or `tcp_retries2` gave up on an unanswering path (ETIMEDOUT,
    /// no RST), or the owner gave up first.
    RetransmitTimeout,
    /// Ended with data sent and not acknowledged (`tcpi_unacked` > 0) and no retransmission
    /// yet: a RST from the peer or an abort cut it off in flight.
    Unacked,
    /// Aborted on this host by its owner: closed with `SO_LINGER` 0. The abort
    /// (`tcp_disconnect`) clears the local address, the peer's port and the counters before
    /// the kernel reports the socket: only the local port and the peer's address are left. A socket killed with SOCK_DESTROY keeps its
    /// peer's port and reads as [`Ending::Closed`].
    Aborted,
    /// Nothing pending: an orderly close (FIN) or a RST from the peer while idle.
    Closed,
}

impl Ending {
    /// Classify a destroyed socket's last record.
    pub fn of(e: &SocketEntry) -> Self {
        let Some(i) = e.info.as_ref() else {
            return Self::Closed;
        };
        if i.probes > 0 && i.unacked == 0 {
            Self::KeepaliveTimeout
        } else if i.retransmits > 0 || i.backoff > 0 {
            Self::RetransmitTimeout
        } else if i.unacked > 0 {
            Self::Unacked
        } else if e.peer.port() == 0 {
            Self::Aborted
        } else {
            Self::Closed
        }
    }

    /// The name used in JSON and tables (`keepalive_timeout`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::KeepaliveTimeout => "keepalive_timeout",
            Self::RetransmitTimeout => "retransmit_timeout",
            Self::Unacked => "unacked",
            Self::Aborted => "aborted",
            Self::Closed => "closed",
        }
    }
}

/// One socket the kernel destroyed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Closed {
    /// Its last record (state CLOSE; tcp_info as it ended).
    pub entry: SocketEntry,
    pub ending: Ending,
}

/// What [`Closes::next`] found.
#[derive(Debug)]
pub enum Heard {
    /// Sockets that ended, in the order the kernel reported them.
    Closed(Vec<Closed>),
    /// The kernel dropped messages because they were not read fast enough (ENOBUFS): some
    /// closes were missed.
    Overrun,
    /// Nothing within the timeout.
    Nothing,
}

/// A subscription to the kernel's destroyed-TCP-socket messages (`ss -E`).
pub struct Closes {
    sock: Socket,
    buf: Vec<u8>,
}

impl Closes {
    /// Join both groups (IPv4 and IPv6) in the calling thread's network namespace.
    pub fn subscribe() -> Result<Self> {
        let mut sock = Socket::new(NETLINK_SOCK_DIAG)
            .map_err(|e| Error::io("open a NETLINK_SOCK_DIAG socket", e))?;
        let _ = sock.set_rx_buf_sz(4 * 1024 * 1024);
        sock.bind(&NlAddr::new(0, GROUPS_TCP_DESTROY))
            .map_err(|e| {
                Error::io(
                    "listen for closed TCP sockets (join the sock_diag destroy groups)",
                    e,
                )
            })?;
        Ok(Self {
            sock,
            buf: Vec::with_capacity(64 * 1024),
        })
    }

    /// Wait up to `timeout` for the next message(s).
    pub fn next(&mut self, timeout: Duration) -> Result<Heard> {
        use std::os::fd::AsRawFd;
        let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
        let mut pfd = libc::pollfd {
            fd: self.sock.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd for a descriptor we own.
        let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
        if rc < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                return Ok(Heard::Nothing);
            }
            return Err(Error::io("wait for closed TCP sockets", err));
        }
        if rc == 0 {
            return Ok(Heard::Nothing);
        }
        self.buf.clear();
        match self.sock.recv(&mut self.buf, 0) {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => return Ok(Heard::Overrun),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(Heard::Nothing),
            Err(e) => return Err(Error::io("read closed TCP sockets", e)),
        }
        Ok(Heard::Closed(parse_closes(&self.buf)))
    }
}

/// The destroyed sockets in one received buffer; malformed messages are skipped.
pub fn parse_closes(buf: &[u8]) -> Vec<Closed> {
    let mut out = Vec::new();
    let mut off = 0;
    while buf.len().saturating_sub(off) >= NLMSG_HDRLEN {
        let h = &buf[off..];
        let len = h
            .get(0..4)
            .and_then(|b| b.try_into().ok())
            .map_or(0, u32::from_ne_bytes);
        let len = usize::try_from(len).unwrap_or(0);
        let ty = h
            .get(4..6)
            .and_then(|b| b.try_into().ok())
            .map_or(0, u16::from_ne_bytes);
        if len < NLMSG_HDRLEN || len > h.len() {
            break;
        }
        if ty == SOCK_DIAG_BY_FAMILY {
            if let Ok(entry) = parse_diag_msg(&h[NLMSG_HDRLEN..len]) {
                let ending = Ending::of(&entry);
                out.push(Closed { entry, ending });
            }
        } else if ty == NLMSG_OVERRUN {
            break;
        }
        off += (len + 3) & !3;
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::diag::{Filter, States};
    use crate::info::TcpInfo;
    use std::io::{Read, Write};

    fn entry(peer_port: u16, info: TcpInfo) -> SocketEntry {
        SocketEntry {
            local: "127.0.0.1:40000".parse().unwrap(),
            peer: SocketAddr::from(([127, 0, 0, 1], peer_port)),
            state: 7,
            timer: crate::diag::TimerKind::None,
            expires: Duration::ZERO,
            retrans: 0,
            recv_q: 0,
            send_q: 0,
            uid: 0,
            inode: 0,
            cookie: 0x1_0000_0002,
            info: Some(info),
        }
    }

    #[test]
    fn endings_are_read_from_the_counters() {
        let i = TcpInfo::default();
        assert_eq!(Ending::of(&entry(80, i)), Ending::Closed);
        assert_eq!(Ending::of(&entry(0, i)), Ending::Aborted);
        let ka = TcpInfo { probes: 3, ..i };
        assert_eq!(Ending::of(&entry(80, ka)), Ending::KeepaliveTimeout);
        let rto = TcpInfo {
            retransmits: 5,
            unacked: 1,
            ..i
        };
        assert_eq!(Ending::of(&entry(80, rto)), Ending::RetransmitTimeout);
        let cut = TcpInfo { unacked: 2, ..i };
        assert_eq!(Ending::of(&entry(80, cut)), Ending::Unacked);
    }

    #[test]
    fn destroy_request_names_the_socket_and_its_cookie() {
        let e = entry(8080, TcpInfo::default());
        let r = destroy_request(&e, 9);
        assert_eq!(r.len(), 72);
        assert_eq!(u16::from_ne_bytes([r[4], r[5]]), SOCK_DESTROY);
        assert_eq!(r[16], 2);
        assert_eq!(u16::from_be_bytes([r[24], r[25]]), 40000);
        assert_eq!(u16::from_be_bytes([r[26], r[27]]), 8080);
        assert_eq!(&r[28..32], &[127, 0, 0, 1]);
        assert_eq!(u32::from_ne_bytes(r[64..68].try_into().unwrap()), 2);
        assert_eq!(u32::from_ne_bytes(r[68..72].try_into().unwrap()), 1);
    }

    #[test]
    fn odd_buffers_never_panic() {
        let mut x = 0x9e37_79b9u32;
        for _ in 0..2000 {
            let bytes: Vec<u8> = (0..(x % 200))
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    x.to_le_bytes()[0]
                })
                .collect();
            let _ = parse_closes(&bytes);
            let _ = read_ack(&bytes, 1);
        }
    }

    #[test]
    fn killed_socket_is_reset_and_heard_closing() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: needs root");
            return;
        }
        let mut closes = Closes::subscribe().unwrap();
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (mut s, _) = l.accept().unwrap();
        c.write_all(b"x").unwrap();
        let mut one = [0u8; 1];
        s.read_exact(&mut one).unwrap();
        let mine = crate::diag::list(&Filter {
            src: Some(
                crate::addr::AddrMatch::parse("--src", &c.local_addr().unwrap().to_string())
                    .unwrap(),
            ),
            states: States::ALL,
            ..Filter::default()
        })
        .unwrap();
        assert_eq!(mine.len(), 1, "{mine:?}");
        kill(&mine[0]).unwrap();
        let err = s.read(&mut one).unwrap_err();
        assert_eq!(
            err.kind(),
            io::ErrorKind::ConnectionReset,
            "the peer saw a RST"
        );
        let err = c.read(&mut one).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ECONNABORTED));
        // Killing it again: it is gone.
        assert!(kill(&mine[0]).is_err());
        // The kernel destroys the socket (and tells the group) when its owner lets go.
        let local = c.local_addr().unwrap();
        drop(c);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let mut seen = None;
        while seen.is_none() && std::time::Instant::now() < deadline {
            if let Heard::Closed(v) = closes.next(Duration::from_millis(200)).unwrap() {
                seen = v.into_iter().find(|x| x.entry.local == local);
            }
        }
        let seen = seen.expect("the kill was heard");
        assert_eq!(seen.entry.cookie, mine[0].cookie);
        assert_eq!(
            seen.ending,
            Ending::Closed,
            "idle and killed: nothing pending"
        );
    }
}
