//! The keep-alive prober: measures what a server or proxy does with idle connections.
//!
//! - [`target`]: the URL (http/https) a probe aims at;
//! - [`conn`]: one TCP/TLS connection speaking HTTP/1.x, and the idle watch;
//! - [`probe`]: advertised vs observed keep-alive behaviour, with a verdict;
//! - [`race`]: the reuse race: requests on connections idled around a given time;
//! - [`push`]: push channels (WebSocket, SSE): idle lifetime, how they end, heartbeat needed;
//! - [`push_bench`]: bytes and latency per delivered message for polling, long polling, SSE, WebSocket.

pub mod conn;
pub mod probe;
pub mod push;
pub mod push_bench;
pub mod race;
pub mod target;
pub mod tls;

pub use conn::{Connector, HttpVersion, KeepAliveHeader, Response};
pub use probe::{probe, EndedBy, ObservedClose, PipelineResult, ProbeOptions, ProbeReport};
pub use push::{push_probe, PushEnd, PushKind, PushOptions, PushReport, PushWatch};
pub use race::{race, Bin, RaceOptions, RaceReport};
pub use target::{Scheme, Target};
pub use tls::TlsOptions;
