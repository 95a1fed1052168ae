//! The I/O layer: where frames come from and where they can be written.
//!
//! - [`source`]: the [`PacketSource`](source::PacketSource) seam, and pcap/pcapng files.
//! - [`live`]: AF_PACKET capture through a memory-mapped TPACKET_V3 ring (Linux).
//! - [`bpf`]: the classic BPF program the live socket filters and cuts packets with.
//! - [`ebpf`]: that program as eBPF, with per-flow state that withholds routine packets.
//! - [`writer`]: the pcap writer (to any `Write`, or to a named file).

pub mod bpf;
pub mod ebpf;
pub mod live;
pub mod source;
pub mod writer;
