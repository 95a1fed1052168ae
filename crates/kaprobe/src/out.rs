//! Standard output for every command: lines, JSON lines, tables and generated text, with a
//! reader that goes away (`| head`) carried up to `main` as [`StdoutClosed`] instead of a
//! panic.

use std::io::Write as _;
use std::process::ExitCode;

use crate::exit::{Failure, FAILURE};

/// Standard output went away (its reader closed the pipe, as `head` does): carried up to
/// `main` so that every command's cleanup runs first, and then the command ends quietly
/// with exit status 0, as when it finishes (see README.md).
#[derive(Debug)]
pub struct StdoutClosed;

impl std::fmt::Display for StdoutClosed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("standard output was closed")
    }
}

impl std::error::Error for StdoutClosed {}

/// Write formatted text (and a newline when `newline`) to stdout. A reader that went away is
/// [`StdoutClosed`]; another write error is reported as such.
pub fn write_out(args: std::fmt::Arguments<'_>, newline: bool) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    let r = out
        .write_fmt(args)
        .and_then(|()| {
            if newline {
                out.write_all(b"\n")
            } else {
                Ok(())
            }
        })
        .and_then(|()| out.flush());
    match r {
        Ok(()) => Ok(()),
        Err(e) => Err(stdout_error(e)),
    }
}

/// The error for a failed write to stdout: [`StdoutClosed`] when the reader went away.
pub fn stdout_error(e: std::io::Error) -> anyhow::Error {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        StdoutClosed.into()
    } else {
        Failure::new(
            FAILURE,
            format!("write to stdout: {}", kaprobe_sock::fmt::os_error(&e)),
        )
        .into()
    }
}

/// `println!` for commands: `outln!(...)?` writes a line to stdout and carries a closed
/// pipe up as [`StdoutClosed`] instead of panicking.
#[macro_export]
macro_rules! outln {
    () => {
        $crate::out::write_out(format_args!(""), true)
    };
    ($($arg:tt)*) => {
        $crate::out::write_out(format_args!($($arg)*), true)
    };
}

/// Print one JSON object as a line on stdout.
pub fn print_json_line(v: &serde_json::Value) -> anyhow::Result<()> {
    crate::outln!("{v}")?;
    Ok(())
}

/// Print prose wrapped to the output width (continuation lines indented by 2).
pub fn println_wrapped(text: &str) -> anyhow::Result<()> {
    crate::outln!("{}", crate::term::wrap(text, 2))?;
    Ok(())
}

/// Print a table laid out by [`crate::term::lay_out_table`].
pub fn print_table(t: comfy_table::Table) -> anyhow::Result<()> {
    let t = crate::term::lay_out_table(t, |_, _, _| None);
    crate::outln!("{t}")?;
    Ok(())
}

/// Write generated text to stdout; a reader that went away is not an error.
pub fn write_all(buf: &[u8]) -> anyhow::Result<ExitCode> {
    let mut out = std::io::stdout().lock();
    match out.write_all(buf).and_then(|()| out.flush()) {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(ExitCode::SUCCESS),
        Err(e) => Err(Failure::new(
            FAILURE,
            format!("write to stdout: {}", kaprobe_sock::fmt::os_error(&e)),
        )
        .into()),
    }
}
