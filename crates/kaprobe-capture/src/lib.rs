//! kaprobe-capture: find TCP keep-alive probes on the wire.
//!
//! - [`packet`]: checked views over captured bytes (Ethernet/VLAN, Linux SLL/SLL2, raw IP,
//!   BSD loopback, IPv4, IPv6 with extension headers, TCP) and [`packet::parse_frame`].
//! - [`seq`]: [`SeqNum`], wrapping sequence numbers.
//! - [`source`]: the [`PacketSource`] seam and pcap/pcapng files; [`live`]: AF_PACKET capture.
//! - [`track`]: the flow tracker and classifier (injected time); [`infer`]: naming settings.
//! - [`analyze`]: source -> parser -> filter -> tracker; [`writer`]: pcap output;
//!   [`craft`]: building frames for fixtures.

pub mod analyze;
pub mod bpf;
pub mod craft;
pub mod error;
pub mod infer;
pub mod live;
pub mod metrics;
pub mod packet;
pub mod scenario;
pub mod seq;
pub mod source;
pub mod table;
pub mod track;
pub mod writer;

pub use analyze::{analyze, Analyzer, Filter, RunStats};
pub use error::CaptureError;
pub use infer::Inference;
pub use live::{capture_loopback, LiveSource, LoopbackCapture};
pub use packet::{parse_frame, LinkType, Skip, TcpPacket};
pub use seq::SeqNum;
pub use source::{FileSource, Frame, Next, PacketSource};
pub use track::{Event, FlowSummary, Kind, Outcome, PacketEvent, Role, Tracker, TrackerConfig};
pub use writer::PcapWriter;
