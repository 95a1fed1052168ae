//! The crate's one error enum; each I/O variant says what was being done and to what.

/// Errors from the HTTP server and prober.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An I/O operation failed.
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}
