//! Keep-alive knobs on TCP sockets (set and read back through socket2), the system defaults
//! (`net.ipv4.tcp_keepalive_*`), the kernel's per-socket TCP_INFO counters, and live sockets'
//! timers read through the sock_diag netlink interface (what `ss -tno` shows).
//!
//! Nothing here prints; everything takes plain values and returns typed results.
//!
//! The map:
//! - [`options`]: keep-alive settings on one socket, checked against the kernel's ranges,
//!   set and read back; [`defaults`]: the system's `net.ipv4.tcp_keepalive_*`;
//! - [`info`]: TCP_INFO for one socket; [`diag`]: every socket's timers via sock_diag;
//! - [`conn`] and [`hold`]: open one connection and follow its keep-alive until it ends;
//! - [`addr`]: `--src`/`--dst` prefixes; [`owners`]: the processes holding a socket (`ss -p`);
//!   [`destroy`]: killing sockets (SOCK_DESTROY, `ss -K`) and the stream of closes (`ss -E`);
//! - [`netns`]: a private network namespace for one thread (the demo's silent peer);
//!   [`router`]: namespaces in a line with a router that forgets idle flows (middlebox);
//! - [`fmt`]: how kaprobe writes durations and OS errors, for every crate and command;
//! - [`scrape`]: the `/metrics` responder of every command that serves metrics;
//! - [`error`]: the crate's error type; `ser`: durations as seconds in JSON.

pub mod addr;
pub mod conn;
pub mod defaults;
pub mod destroy;
pub mod diag;
pub mod error;
pub mod fmt;
pub mod hold;
pub mod info;
pub mod netns;
pub mod options;
pub mod owners;
pub mod router;
pub mod scrape;
pub(crate) mod ser;

pub use error::Error;
