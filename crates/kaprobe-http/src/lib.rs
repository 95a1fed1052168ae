//! HTTP/1.x keep-alive server (`server`) and prober (`client`), on tokio + httparse.

pub mod client;
pub mod error;
pub mod h1;
pub mod server;

pub use error::Error;
/// The push channels, a part of the server (kept at this path for existing users).
pub use server::push;
