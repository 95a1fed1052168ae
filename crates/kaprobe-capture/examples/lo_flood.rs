//! Benchmark helper: a loopback packet load without a TCP stack in the way.
//!
//! ```text
//! lo_flood --secs S [--flows F] [--payload B] [--iface lo]
//! ```
//! Sends TCP segments (F flows, B payload bytes each, 16 segments per flow in turn) into
//! `lo` through a packet socket, as fast as the kernel takes them, in batches of 256
//! (sendmmsg). The loopback driver hands each frame back as received traffic, so captures on
//! `lo` see it like any other TCP; the TCP checksum is deliberately wrong, so the stack
//! discards the segments without answering. Prints "sent N packets in T s (R packets/s)".
//! Needs CAP_NET_RAW; run it inside a throw-away network namespace.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use kaprobe_capture::craft::{ethernet_frame, TcpSpec};

fn arg(args: &[String], name: &str, default: &str) -> String {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
        .unwrap_or_else(|| default.to_owned())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let secs: u64 = arg(&args, "--secs", "10").parse().expect("--secs N");
    let flows: u32 = arg(&args, "--flows", "1000").parse().expect("--flows N");
    let payload: usize = arg(&args, "--payload", "100").parse().expect("--payload N");
    let iface = arg(&args, "--iface", "lo");
    let ifindex = std::fs::read_to_string(format!("/sys/class/net/{iface}/ifindex"))
        .expect("interface index")
        .trim()
        .parse::<i32>()
        .expect("interface index");

    // Frames: each flow's next 16 segments, in turn over all flows.
    let mut frames = Vec::new();
    for round in 0..16u32 {
        for f in 0..flows {
            let src: SocketAddr = format!("127.0.0.1:{}", 10_000 + f % 50_000)
                .parse()
                .unwrap();
            let dst: SocketAddr = format!("127.0.0.2:{}", 9 + f / 50_000).parse().unwrap();
            let mut s = TcpSpec::new(src, dst, 1_000 + round * payload as u32, 5_000);
            s.payload = vec![0x61; payload];
            let mut fr = ethernet_frame(&s);
            // Break the TCP checksum: the stack drops the segment without an RST.
            fr[14 + 20 + 16] ^= 0xff;
            frames.push(fr);
        }
    }

    // SAFETY: plain socket(2) call.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
    assert!(
        fd >= 0,
        "packet socket: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: all-zero sockaddr_ll is valid; filled in below.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_ifindex = ifindex;
    sll.sll_halen = 6;

    const BATCH: usize = 256;
    let start = Instant::now();
    let end = start + Duration::from_secs(secs);
    let mut sent = 0u64;
    let mut next = 0usize;
    let mut iovs: Vec<libc::iovec> = Vec::with_capacity(BATCH);
    // SAFETY: all-zero mmsghdr values are valid; each is filled in before use.
    let mut msgs: Vec<libc::mmsghdr> = (0..BATCH).map(|_| unsafe { std::mem::zeroed() }).collect();
    while Instant::now() < end {
        iovs.clear();
        for _ in 0..BATCH {
            let fr = &frames[next];
            next = (next + 1) % frames.len();
            iovs.push(libc::iovec {
                iov_base: fr.as_ptr().cast_mut().cast(),
                iov_len: fr.len(),
            });
        }
        for (m, iov) in msgs.iter_mut().zip(iovs.iter_mut()) {
            m.msg_hdr.msg_name = std::ptr::from_mut(&mut sll).cast();
            m.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_ll>() as u32;
            m.msg_hdr.msg_iov = iov;
            m.msg_hdr.msg_iovlen = 1;
        }
        // SAFETY: msgs point at live iovecs over live frames and at `sll`.
        let n = unsafe { libc::sendmmsg(fd, msgs.as_mut_ptr(), BATCH as u32, 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENOBUFS) {
                std::thread::yield_now();
                continue;
            }
            panic!("sendmmsg: {e}");
        }
        sent += n as u64;
    }
    let el = start.elapsed().as_secs_f64();
    println!(
        "sent {sent} packets in {el:.2} s ({:.0} packets/s)",
        sent as f64 / el
    );
}
