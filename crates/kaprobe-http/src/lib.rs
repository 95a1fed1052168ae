//! HTTP/1.x keep-alive server (`server`) and prober (`client`), on tokio + httparse.

pub mod client;
pub mod error;
pub mod middlebox;
pub mod push;
pub mod server;

pub use error::Error;
