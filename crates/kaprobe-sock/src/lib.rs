//! Keep-alive knobs on TCP sockets (set and read back through socket2), the system defaults
//! (`net.ipv4.tcp_keepalive_*`), the kernel's per-socket TCP_INFO counters, and live sockets'
//! timers read through the sock_diag netlink interface (what `ss -tno` shows).
//!
//! Nothing here prints; everything takes plain values and returns typed results.

pub mod conn;
pub mod defaults;
pub mod diag;
pub mod error;
pub mod fmt;
pub mod hold;
pub mod info;
pub mod netns;
pub mod options;
pub mod ser;

pub use error::Error;
