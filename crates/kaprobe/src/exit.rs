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

pub const SUCCESS: u8 = 0;
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
    let label = crate::term::paint_if(
        crate::term::output().color_err,
        "error:",
        crate::term::style::BAD,
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

/// Map an I/O error met while binding a listening socket to its exit status: permission
/// (a port below 1024) is 6, an address this machine does not have is usage.
pub fn listen_code(err: &std::io::Error) -> u8 {
    match err.kind() {
        std::io::ErrorKind::PermissionDenied => PERMISSION,
        std::io::ErrorKind::AddrNotAvailable => USAGE,
        _ => FAILURE,
    }
}

/// `hold`: the peer closed the connection (FIN).
pub const HOLD_PEER_FIN: u8 = 10;
/// `hold`: the peer reset the connection (RST).
pub const HOLD_PEER_RST: u8 = 11;
/// `hold`: the kernel gave up after the unanswered keep-alive probes.
pub const HOLD_KEEPALIVE_TIMEOUT: u8 = 12;
/// `hold`: TCP_USER_TIMEOUT expired.
pub const HOLD_USER_TIMEOUT: u8 = 13;

/// TLS could not be set up: handshake failure, untrusted or mismatched certificate
/// (`probe`, `race`; an unreadable `--cacert` file is FILE).
pub const TLS: u8 = 8;
/// The peer does not speak HTTP/1.x properly: garbage instead of a response, a response cut
/// off mid-way, or a connection closed or reset with no answer (`probe`, `race`).
pub const PROTOCOL: u8 = 9;

/// Map a capture error to the exit status it should give.
pub fn capture_failure(e: kaprobe_capture::CaptureError) -> anyhow::Error {
    let code = if e.is_permission() {
        PERMISSION
    } else if e.is_file() {
        FILE
    } else if matches!(e, kaprobe_capture::CaptureError::NoSuchInterface { .. }) {
        USAGE
    } else {
        FAILURE
    };
    Failure::new(code, e.to_string()).into()
}

/// Map a prober error to the exit status it should give.
pub fn http_failure(e: kaprobe_http::Error) -> Failure {
    use kaprobe_http::Error as E;
    let code = match &e {
        E::BadUrl { .. } | E::UnsupportedScheme { .. } | E::InvalidOption(_) => USAGE,
        E::Resolve { .. } => RESOLVE,
        E::Connect { source, .. } => connect_code(source),
        E::ConnectTimeout { .. } | E::NoAnswer { .. } => UNREACHABLE,
        E::Tls { .. } => TLS,
        E::CaFile { .. } => FILE,
        E::Garbage { .. }
        | E::ClosedMidResponse { .. }
        | E::NoResponse { .. }
        | E::NotPush { .. }
        | E::NotHttp2 { .. } => PROTOCOL,
        _ => FAILURE,
    };
    Failure::new(code, e.to_string())
}

/// Map a socket-layer error to the exit status it should give: a value out of the kernel's
/// range or an unknown name is usage; an I/O error by its kind (refused, unreachable,
/// permission).
pub fn sock_failure(e: kaprobe_sock::Error) -> Failure {
    use kaprobe_sock::Error as E;
    let code = match &e {
        E::OutOfRange { .. } | E::UnknownName { .. } | E::Invalid { .. } => USAGE,
        E::Io { source, .. } => connect_code(source),
        E::Parse { .. } => FAILURE,
    };
    Failure::new(code, e.to_string())
}
