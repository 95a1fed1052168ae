//! kaprobe-capture: find TCP keep-alive probes on the wire.
//!
//! The crate's map, from bytes to findings:
//!
//! ```text
//! wire/      what captured bytes say, statelessly (views over bytes, and the TcpRepr summary)
//!   link       LinkType; Ethernet (VLAN/QinQ), Linux SLL/SLL2 views; BSD loopback families
//!   ip         IPv4 and IPv6 views (extension headers skipped)
//!   tcp        the TcpSegment view, TcpFlags, the TcpRepr summary the tracker keeps
//!   packet     parse_frame: a captured frame to a TcpRepr, or a Skip saying why not
//!   seq        SeqNum, wrapping sequence numbers
//! io/        where frames come from and go to
//!   source     the PacketSource seam; pcap/pcapng files (FileSource)
//!   live       AF_PACKET capture through a TPACKET_V3 ring (LiveSource)
//!   bpf        the in-kernel filter for live capture
//!   writer     the pcap writer (PcapWriter, and PcapFile over a named file)
//! flow/      connections over time (injected time, never the clock)
//!   table      the bounded flow table
//!   track      the Tracker: probe/ACK classification, flow summaries
//!   infer      naming the keep-alive settings behind a flow's probes
//! filter     pcap-filter(7) expressions, compiled to the same BPF for live capture and files
//! analyze    source -> parser -> filter -> tracker, for files (analyze) and loops (Analyzer)
//! watch      the live loop: a source through the analyzer, with ticks; LoopbackCapture
//! metrics    Prometheus counters and histograms for `watch --metrics`
//! error      CaptureError
//! craft, scenario   (feature `testing`) frames and labelled conversations for fixtures
//! ```
//!
//! The old flat paths (`kaprobe_capture::packet`, `::track`, `::source`, ...) still work:
//! they re-export the modules above.

pub mod analyze;
#[cfg(any(test, feature = "testing"))]
pub mod craft;
pub mod error;
pub mod filter;
pub mod flow;
pub mod io;
pub mod metrics;
#[cfg(any(test, feature = "testing"))]
pub mod scenario;
pub mod watch;
pub mod wire;

pub use flow::{infer, table, track};
pub use io::{bpf, live, source, writer};
pub use wire::{packet, seq};

pub use analyze::{analyze, Analyzer, Filter, RunStats};
pub use error::CaptureError;
pub use flow::infer::Inference;
pub use flow::track::{
    Event, FlowSummary, Kind, Outcome, PacketEvent, Role, Tracker, TrackerConfig,
};
pub use io::live::LiveSource;
pub use io::source::{FileSource, Frame, Next, PacketSource};
pub use io::writer::{PcapFile, PcapWriter};
pub use watch::{capture_loopback, LoopbackCapture};
pub use wire::packet::{parse_frame, LinkType, Skip, TcpRepr};
pub use wire::seq::SeqNum;

/// The former name of [`TcpRepr`], the parsed summary of a TCP segment.
pub type TcpPacket = TcpRepr;
