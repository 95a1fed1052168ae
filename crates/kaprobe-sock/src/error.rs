//! The crate's one error enum: each variant reads as a sentence naming what was being done.

use std::io;

/// Errors from socket tuning, system defaults and sock_diag.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A keep-alive value is outside what the kernel accepts.
    #[error("{flag} {value} is out of range: {range}")]
    OutOfRange {
        flag: String,
        value: String,
        range: String,
    },
    /// A socket operation failed; `what` names the operation and the socket.
    #[error("{what}: {}", crate::fmt::os_error(source))]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    /// A kernel answer could not be understood.
    #[error("{what}: {detail}")]
    Parse { what: String, detail: String },
    /// A name given to a flag (a TCP state, ...) is not one it accepts.
    #[error("{flag} {value:?} is not recognised: use one of {valid}")]
    UnknownName {
        flag: String,
        value: String,
        valid: String,
    },
    /// A value given to a flag cannot be used; `reason` says why and what would do.
    #[error("{flag} {value:?} is not valid: {reason}")]
    Invalid {
        flag: String,
        value: String,
        reason: String,
    },
}

impl Error {
    /// Wrap an I/O error with what was being done.
    pub fn io(what: impl Into<String>, source: io::Error) -> Self {
        Self::Io {
            what: what.into(),
            source,
        }
    }

    /// The underlying I/O error, if any (for mapping to exit codes).
    pub fn io_error(&self) -> Option<&io::Error> {
        match self {
            Self::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, Error>;

/// Errors added for the sock_diag reader (`kaprobe sockets`).
impl Error {
    /// A name given to a flag is not one of the names it accepts.
    pub fn unknown_name(flag: &str, value: &str, valid: &str) -> Self {
        Self::UnknownName {
            flag: flag.into(),
            value: value.into(),
            valid: valid.into(),
        }
    }
}
