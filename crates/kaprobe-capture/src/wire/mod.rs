//! The wire layer: what captured bytes say, without any state.
//!
//! Two kinds of types live here, named as smoltcp names them:
//! - a *view* wraps a byte buffer (`T: AsRef<[u8]>`) without copying it; its checked
//!   constructor `new_checked` proves the buffer long enough, so no accessor can panic.
//!   Views are named after the unit they frame: [`EthernetFrame`](link::EthernetFrame),
//!   [`SllFrame`](link::SllFrame), [`Sll2Frame`](link::Sll2Frame) (link layer),
//!   [`Ipv4Packet`](ip::Ipv4Packet), [`Ipv6Packet`](ip::Ipv6Packet) (network layer),
//!   [`TcpSegment`](tcp::TcpSegment) (transport layer).
//! - a *repr* is a plain, owned summary of parsed fields: [`TcpRepr`](tcp::TcpRepr) holds
//!   what the flow tracker works on (addresses, ports, sequence numbers, flags, window,
//!   payload length). It was called `TcpPacket`; that name remains as an alias at the crate
//!   root.
//!
//! Every header's field offsets are named constants in a `*_field` module next to its view
//! (`eth_field`, `sll_field`, `sll2_field`, `ipv4_field`, `ipv6_field`, `tcp_field`).
//!
//! - [`link`]: link types and link-layer views; [`ip`]: IPv4/IPv6 views; [`tcp`]: the TCP
//!   view and repr, flags.
//! - [`packet`]: [`parse_frame`](packet::parse_frame), a frame to a `TcpRepr`, and
//!   [`Skip`](packet::Skip), why a frame was not one.
//! - [`seq`]: [`SeqNum`](seq::SeqNum), the wrapping sequence number.

pub mod ip;
pub mod link;
pub mod packet;
pub mod seq;
pub mod tcp;

/// The big-endian u16 at `at` (callers have checked the length).
fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

/// The big-endian u32 at `at` (callers have checked the length).
fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
