//! The wire layer: what captured bytes say, without any state.
//!
//! Two kinds of types live here, named as smoltcp names them:
//! - a *view* (`EthernetFrame<T>`, `SllFrame<T>`, `Sll2Frame<T>`, `Ipv4Packet<T>`,
//!   `Ipv6Packet<T>`, [`TcpSegment<T>`](packet::TcpSegment)) wraps a byte buffer without
//!   copying it; its checked constructor `new_checked` proves the buffer long enough, so no
//!   accessor can panic. Field positions are named constants, one `field` module per header.
//! - a *repr* ([`TcpRepr`](packet::TcpRepr)) is the plain, owned summary of one TCP segment
//!   that the flow tracker works on: addresses, ports, sequence numbers, flags, window,
//!   payload length. [`parse_frame`](packet::parse_frame) goes from a captured frame to it.
//!
//! [`SeqNum`](seq::SeqNum) is the wrapping sequence number both use.

pub mod packet;
pub mod seq;
