//! Exit codes and the one place errors are turned into a message and a status.
//!
//! | code | meaning |
//! |------|---------|
//! | 0    | success (for `hold`: see its own table in docs/hold.md) |
//! | 1    | any other failure (I/O, unexpected) |
//! | 2    | bad usage or an out-of-range value |
//! | 3    | a host name could not be resolved |
//! | 4    | connection refused |
//! | 5    | host unreachable or connect timed out |
//! | 6    | permission denied (needs root or a capability) |
//! | 7    | a file could not be read or written, or is not in a format kaprobe reads |

use std::fmt;
use std::process::ExitCode;

pub const FAILURE: u8 = 1;
pub const USAGE: u8 = 2;
pub const RESOLVE: u8 = 3;
pub const REFUSED: u8 = 4;
pub const UNREACHABLE: u8 = 5;
pub const PERMISSION: u8 = 6;
pub const FILE: u8 = 7;

/// An error that carries the exit status it should produce.
#[derive(Debug)]
pub struct Failure {
    pub code: u8,
    pub message: String,
}

impl Failure {
    pub fn new(code: u8, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    /// A bad flag value: exit status 2.
    pub fn usage(message: impl Into<String>) -> Self {
        Self::new(USAGE, message)
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Failure {}

/// Print `kaprobe: error: ...` (with causes) on stderr and pick the exit status.
pub fn report(err: &anyhow::Error) -> ExitCode {
    let code = err
        .chain()
        .find_map(|e| e.downcast_ref::<Failure>().map(|f| f.code))
        .unwrap_or(FAILURE);
    let mut msg = err.to_string();
    for cause in err.chain().skip(1) {
        // OS errors read the same whichever command met them.
        let c = cause
            .downcast_ref::<std::io::Error>()
            .map_or_else(|| cause.to_string(), kaprobe_sock::fmt::os_error);
        if !msg.contains(&c) {
            msg.push_str(": ");
            msg.push_str(&c);
        }
    }
    let label = crate::util::paint_if(
        crate::util::output().color_err,
        "error:",
        crate::util::style::BAD,
    );
    eprintln!("kaprobe: {label} {msg}");
    ExitCode::from(code)
}

/// Map an I/O error kind met while connecting to its exit status.
pub fn connect_code(err: &std::io::Error) -> u8 {
    use std::io::ErrorKind as K;
    match err.kind() {
        K::ConnectionRefused => REFUSED,
        K::PermissionDenied => PERMISSION,
        K::TimedOut | K::HostUnreachable | K::NetworkUnreachable => UNREACHABLE,
        _ => match err.raw_os_error() {
            Some(libc::EHOSTUNREACH | libc::ENETUNREACH | libc::ETIMEDOUT) => UNREACHABLE,
            _ => FAILURE,
        },
    }
}

/// TLS could not be set up: handshake failure, untrusted or mismatched certificate
/// (`probe`, `race`; an unreadable `--cacert` file is FILE).
pub const TLS: u8 = 8;
/// The peer does not speak HTTP/1.x properly: garbage instead of a response, a response cut
/// off mid-way, or a connection closed or reset with no answer (`probe`, `race`).
pub const PROTOCOL: u8 = 9;
