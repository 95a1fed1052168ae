//! HTTP/1.x and HTTP/2 keep-alive server (`server`) and prober (`client`), on tokio + httparse.
//!
//! The map:
//! - [`h1`]: the HTTP/1 codec pieces both sides share (chunked bodies, request writing,
//!   response heads, SSE);
//! - [`h2wire`]: HTTP/2 frames as they cross the wire (a scanner, a tap on a connection and
//!   raw frame writers), for what the `h2` crate does not show;
//! - [`server`]: `kaprobe serve`, one tree (config, close reasons, accept, parse, proto,
//!   conn, park, metrics, and the push endpoints under `server::push`);
//! - [`client`]: the prober, the reuse race and the push benchmark;
//! - [`exporter`]: `kaprobe exporter`, probes on demand as Prometheus metrics;
//! - [`middlebox`]: the TCP relay with an idle timer;
//! - [`error`]: the crate's error type.

pub mod client;
pub mod error;
pub mod exporter;
pub mod h1;
pub mod h2wire;
pub mod middlebox;
pub mod server;

pub use error::Error;
/// The push channels, a part of the server (kept at this path for existing users).
pub use server::push;
