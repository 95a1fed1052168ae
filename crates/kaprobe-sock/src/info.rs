//! TCP_INFO: the kernel's counters for one socket (`struct tcp_info`, linux/tcp.h).
//!
//! The same bytes arrive two ways: `getsockopt(TCP_INFO)` on a socket we own, and the
//! `INET_DIAG_INFO` attribute of a sock_diag answer for any socket. [`TcpInfo::parse`]
//! reads both; fields beyond what an older kernel returns read as zero.

use std::os::fd::AsRawFd;
use std::time::Duration;

use serde::Serialize;

use crate::error::{Error, Result};

/// TCP states as the kernel numbers them (include/net/tcp_states.h).
pub const TCP_STATE_NAMES: [&str; 13] = [
    "UNKNOWN",
    "ESTAB",
    "SYN-SENT",
    "SYN-RECV",
    "FIN-WAIT-1",
    "FIN-WAIT-2",
    "TIME-WAIT",
    "UNCONN",
    "CLOSE-WAIT",
    "LAST-ACK",
    "LISTEN",
    "CLOSING",
    "NEW-SYN-RECV",
];

/// Name of a kernel TCP state number (`ESTAB`, `LISTEN`, ...), `UNKNOWN` if out of range.
pub fn state_name(state: u8) -> &'static str {
    TCP_STATE_NAMES
        .get(usize::from(state))
        .copied()
        .unwrap_or("UNKNOWN")
}

/// The subset of `struct tcp_info` that keep-alive analysis uses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct TcpInfo {
    /// Kernel TCP state number (see [`state_name`]).
    pub state: u8,
    /// Retransmissions of the head segment not yet acknowledged.
    pub retransmits: u8,
    /// Keep-alive or zero-window probes sent without an answer (`icsk_probes_out`); resets to
    /// 0 whenever the peer acknowledges.
    pub probes: u8,
    /// Exponential backoff count of the retransmission timer.
    pub backoff: u8,
    /// Retransmission timeout, microseconds.
    pub rto_us: u32,
    /// Milliseconds since data was last sent.
    pub last_data_sent_ms: u32,
    /// Milliseconds since data was last received.
    pub last_data_recv_ms: u32,
    /// Milliseconds since an ACK was last received (a keep-alive answer resets it).
    pub last_ack_recv_ms: u32,
    /// Smoothed round-trip time, microseconds.
    pub rtt_us: u32,
    /// Total retransmitted segments.
    pub total_retrans: u32,
    /// Bytes acknowledged by the peer.
    pub bytes_acked: u64,
    /// Bytes received from the peer.
    pub bytes_received: u64,
    /// Segments sent (keep-alive probes included).
    pub segs_out: u32,
    /// Segments received (keep-alive ACKs included).
    pub segs_in: u32,
    /// Segments sent and not yet acknowledged (`tcpi_unacked`).
    #[serde(skip)]
    pub unacked: u32,
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    b.get(off..off + 4)
        .and_then(|s| s.try_into().ok())
        .map_or(0, u32::from_ne_bytes)
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    b.get(off..off + 8)
        .and_then(|s| s.try_into().ok())
        .map_or(0, u64::from_ne_bytes)
}

impl TcpInfo {
    /// Parse the kernel's `struct tcp_info` bytes (native endianness). Short input (an
    /// older kernel) leaves the missing fields at zero; it never panics.
    pub fn parse(b: &[u8]) -> Self {
        let byte = |i: usize| b.get(i).copied().unwrap_or(0);
        Self {
            state: byte(0),
            retransmits: byte(2),
            probes: byte(3),
            backoff: byte(4),
            rto_us: u32_at(b, 8),
            last_data_sent_ms: u32_at(b, 44),
            last_data_recv_ms: u32_at(b, 52),
            last_ack_recv_ms: u32_at(b, 56),
            rtt_us: u32_at(b, 68),
            total_retrans: u32_at(b, 100),
            bytes_acked: u64_at(b, 120),
            bytes_received: u64_at(b, 128),
            segs_out: u32_at(b, 136),
            segs_in: u32_at(b, 140),
            unacked: u32_at(b, 24),
        }
    }

    /// The state's name (`ESTAB`, `CLOSE-WAIT`, ...).
    pub fn state_name(&self) -> &'static str {
        state_name(self.state)
    }

    /// Time since an ACK was last received.
    pub fn since_last_ack(&self) -> Duration {
        Duration::from_millis(u64::from(self.last_ack_recv_ms))
    }
}

/// Read TCP_INFO from a socket we hold. `peer` names it in errors.
pub fn tcp_info(sock: &impl AsRawFd, peer: &str) -> Result<TcpInfo> {
    let mut buf = [0u8; 512];
    let mut len = libc::socklen_t::try_from(buf.len()).unwrap_or(libc::socklen_t::MAX);
    // SAFETY: `buf` is valid for writes of `len` bytes and `len` points to its size; the
    // kernel writes at most `len` bytes and stores the written length back into `len`.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            buf.as_mut_ptr().cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(Error::io(
            format!("read TCP_INFO on the connection to {peer}"),
            std::io::Error::last_os_error(),
        ));
    }
    let n = usize::try_from(len).unwrap_or(0).min(buf.len());
    Ok(TcpInfo::parse(&buf[..n]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_input_reads_as_zero_without_panicking() {
        assert_eq!(TcpInfo::parse(&[]), TcpInfo::default());
        let i = TcpInfo::parse(&[1, 0, 0, 2]);
        assert_eq!(i.state, 1);
        assert_eq!(i.probes, 2);
        assert_eq!(i.last_ack_recv_ms, 0);
    }

    #[test]
    fn live_socket_reports_established() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (_s, _) = l.accept().unwrap();
        let i = tcp_info(&c, "test").unwrap();
        assert_eq!(i.state_name(), "ESTAB");
        assert!(i.segs_out >= 2, "SYN and ACK were sent: {i:?}");
        assert_eq!(i.probes, 0);
    }

    #[test]
    fn state_names_cover_out_of_range() {
        assert_eq!(state_name(10), "LISTEN");
        assert_eq!(state_name(200), "UNKNOWN");
    }
}
