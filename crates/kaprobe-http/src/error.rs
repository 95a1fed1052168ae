//! The crate's one error enum; each I/O variant says what was being done and to what.

/// Errors from the HTTP server and prober.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An I/O operation failed.
    #[error("{what}: {}", kaprobe_sock::fmt::os_error(source))]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    // --- prober (client) errors ---
    /// The URL given to the prober cannot be used.
    #[error("bad URL '{url}': {reason}")]
    BadUrl { url: String, reason: String },
    /// The URL's scheme is not http or https.
    #[error("unsupported scheme '{scheme}' in '{url}': kaprobe speaks http://, https://, h2c://, ws:// and wss://")]
    UnsupportedScheme { url: String, scheme: String },
    /// The host name did not resolve.
    #[error("could not resolve host '{host}': {reason}")]
    Resolve { host: String, reason: String },
    /// Connecting failed (refused, unreachable, ...).
    #[error(
        "connect to {addr}{}: {}",
        named(host, addr),
        kaprobe_sock::fmt::os_error(source)
    )]
    Connect {
        host: String,
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// Connecting did not finish in time.
    #[error("connect to {addr}{}: no answer within {}", named(host, addr), kaprobe_sock::fmt::duration(*after))]
    ConnectTimeout {
        host: String,
        addr: std::net::SocketAddr,
        after: std::time::Duration,
    },
    /// TLS could not be set up (handshake failure, bad certificate, bad CA file).
    #[error("TLS {what}: {reason}")]
    Tls { what: String, reason: String },
    /// The server accepted the request but sent no (complete) answer in time.
    #[error("{what}: no answer within {:.2}s", after.as_secs_f64())]
    NoAnswer {
        what: String,
        after: std::time::Duration,
    },
    /// The server answered with something that is not HTTP/1.x.
    #[error("{what}: the answer is not HTTP/1.x ({detail})")]
    Garbage { what: String, detail: String },
    /// The connection ended before a response was complete.
    #[error("{what}: the connection closed mid-response ({detail})")]
    ClosedMidResponse { what: String, detail: String },
    /// The connection was reset or closed before any response byte.
    #[error("{what}: {detail}")]
    NoResponse { what: String, detail: String },
    /// The server answered, but not as a push channel (no WebSocket upgrade, no event stream).
    #[error("{what}: {detail}")]
    NotPush { what: String, detail: String },
    /// A CA certificate file could not be read or holds no PEM certificate.
    #[error("CA file {path}: {reason}")]
    CaFile { path: String, reason: String },
    /// A prober option is out of range.
    #[error("{0}")]
    InvalidOption(String),
    /// The server will not speak HTTP/2 (h2c with prior knowledge, or `h2` by ALPN).
    #[error("{what}: {detail}")]
    NotHttp2 { what: String, detail: String },
}

/// ` (host)` after an address, unless the host was that address already.
fn named(host: &str, addr: &std::net::SocketAddr) -> String {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if bare
        .parse::<std::net::IpAddr>()
        .is_ok_and(|ip| ip == addr.ip())
    {
        String::new()
    } else {
        format!(" ({host})")
    }
}
