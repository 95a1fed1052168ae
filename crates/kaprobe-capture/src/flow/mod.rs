//! The flow layer: TCP connections over time, fed one [`TcpRepr`](crate::wire::packet::TcpRepr)
//! at a time with injected timestamps (never the clock).
//!
//! - [`table`]: the bounded flow table (direction-independent keys, least recently active
//!   first out).
//! - [`track`]: the [`Tracker`](track::Tracker): per-flow state, probe and ACK
//!   classification, flow summaries and outcomes.
//! - [`ending`]: how each connection ended, who ended it, failed reuses, and the idle limit
//!   reuses towards one server bracket.
//! - [`infer`]: naming the keep-alive settings (idle, interval, count) a flow's probes show.

pub mod ending;
pub mod infer;
pub mod table;
pub mod track;
