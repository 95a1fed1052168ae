//! Small helpers shared by commands: duration parsing, JSON lines, tables.

use std::time::Duration;

/// Parse a duration the way every kaprobe flag does (`75s`, `2h`, `1m30s`, `2.5s`,
/// `250ms`), or a bare number meaning seconds (`5`, `2.5`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    kaprobe_sock::fmt::parse_duration(s)
}

/// Seconds as a float, the unit every JSON duration uses.
pub fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// A duration the one way kaprobe writes it: `250ms`, `2.5s`, `15m24.6s`, `2h11m15s`.
pub fn human(d: Duration) -> String {
    kaprobe_sock::fmt::duration(d)
}

/// A flag that becomes true on SIGINT or SIGTERM, so a command can stop and summarise.
pub fn stop_flag() -> anyhow::Result<std::sync::Arc<std::sync::atomic::AtomicBool>> {
    let flag = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, std::sync::Arc::clone(&flag))?;
    }
    Ok(flag)
}

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
        crate::exit::Failure::new(crate::exit::FAILURE, format!("write to stdout: {e}")).into()
    }
}

/// `println!` for commands: `outln!(...)?` writes a line to stdout and carries a closed
/// pipe up as [`StdoutClosed`] instead of panicking.
#[macro_export]
macro_rules! outln {
    () => {
        $crate::util::write_out(format_args!(""), true)
    };
    ($($arg:tt)*) => {
        $crate::util::write_out(format_args!($($arg)*), true)
    };
}

/// Print one JSON object as a line on stdout.
pub fn print_json_line(v: &serde_json::Value) -> anyhow::Result<()> {
    crate::outln!("{v}")?;
    Ok(())
}

/// Where output goes and how it may look: decided once in `main` from `--color`, the
/// environment and whether stdout/stderr are terminals.
#[derive(Debug, Clone, Copy)]
pub struct Output {
    /// ANSI colour on stdout.
    pub color: bool,
    /// ANSI colour on stderr (error messages).
    pub color_err: bool,
    /// Columns human output should fit in.
    pub width: usize,
}

static OUTPUT: std::sync::OnceLock<Output> = std::sync::OnceLock::new();

/// Width when stdout is not a terminal and `COLUMNS` does not say otherwise.
pub const PIPE_WIDTH: usize = 80;

/// Decide colour per stream the way clap and most tools do: `--color always|never` wins;
/// under `auto`, a non-empty `NO_COLOR` turns colour off, a `CLICOLOR_FORCE` other than `0`
/// turns it on, `CLICOLOR=0` turns it off, and otherwise only a terminal (with a `TERM`
/// other than `dumb`) gets colour.
pub fn wants_color(choice: clap::ColorChoice, is_terminal: bool) -> bool {
    let env = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
    match choice {
        clap::ColorChoice::Always => true,
        clap::ColorChoice::Never => false,
        clap::ColorChoice::Auto => {
            if env("NO_COLOR").is_some() {
                false
            } else if env("CLICOLOR_FORCE").is_some_and(|v| v != "0") {
                true
            } else if env("CLICOLOR").is_some_and(|v| v == "0") {
                false
            } else {
                is_terminal && env("TERM").is_none_or(|t| t != "dumb")
            }
        }
    }
}

/// The width to fit: `COLUMNS` when it is a sensible number, else the terminal's width,
/// else [`PIPE_WIDTH`].
pub fn detect_width(stdout_is_terminal: bool) -> usize {
    let columns = std::env::var("COLUMNS")
        .ok()
        .and_then(|c| c.trim().parse::<usize>().ok())
        .filter(|c| (20..=10_000).contains(c));
    if let Some(c) = columns {
        return c;
    }
    if stdout_is_terminal {
        // comfy-table asks the terminal for its size only when stdout is one. A terminal
        // that reports almost no width (a pty nobody sized) gets the pipe width instead.
        if let Some(w) = comfy_table::Table::new().width().map(usize::from) {
            if w >= 20 {
                return w;
            }
        }
    }
    PIPE_WIDTH
}

/// Set the output settings for the whole run (the first call wins).
pub fn init_output(choice: clap::ColorChoice) -> Output {
    use std::io::IsTerminal;
    let out = std::io::stdout().is_terminal();
    let o = Output {
        color: wants_color(choice, out),
        color_err: wants_color(choice, std::io::stderr().is_terminal()),
        width: detect_width(out),
    };
    *OUTPUT.get_or_init(|| o)
}

/// The output settings (plain and [`PIPE_WIDTH`] wide before [`init_output`]).
pub fn output() -> Output {
    OUTPUT.get().copied().unwrap_or(Output {
        color: false,
        color_err: false,
        width: PIPE_WIDTH,
    })
}

/// Styles used sparingly: verdicts, dead or alive, errors.
pub mod style {
    use clap::builder::styling::{AnsiColor, Style};

    pub const BAD: Style = AnsiColor::Red.on_default().bold();
    pub const EMPHASIS: Style = Style::new().bold();
}

/// `text` in `style` when stdout gets colour, else as is.
pub fn paint(text: &str, style: clap::builder::styling::Style) -> String {
    paint_if(output().color, text, style)
}

/// `text` in `style` when `on`, else as is.
pub fn paint_if(on: bool, text: &str, style: clap::builder::styling::Style) -> String {
    if on {
        format!("{style}{text}{style:#}")
    } else {
        text.to_string()
    }
}

/// Prose is never wrapped wider than this, however wide the terminal (as clap's help).
pub const PROSE_MAX: usize = 100;

/// Wrap prose to the output width (at most [`PROSE_MAX`]): lines break at spaces,
/// continuation lines get `indent` spaces. Words longer than a line stay whole. Existing
/// newlines are kept.
pub fn wrap(text: &str, indent: usize) -> String {
    wrap_to(text, output().width.min(PROSE_MAX), indent)
}

/// [`wrap`] to an explicit width.
pub fn wrap_to(text: &str, width: usize, indent: usize) -> String {
    let mut out = String::with_capacity(text.len() + 16);
    for (n, line) in text.split('\n').enumerate() {
        if n > 0 {
            out.push('\n');
        }
        // Keep a line's own leading spaces for its continuation lines too.
        let lead = line.len() - line.trim_start_matches(' ').len();
        let cont = " ".repeat(lead + indent);
        let mut col = 0;
        out.push_str(&line[..lead]);
        col += lead;
        let mut first = true;
        for word in line[lead..].split(' ') {
            let w = word.chars().count();
            if !first && col + 1 + w > width {
                out.push('\n');
                out.push_str(&cont);
                col = cont.len();
            } else if !first {
                out.push(' ');
                col += 1;
            }
            out.push_str(word);
            col += w;
            first = false;
        }
    }
    out
}

/// Print prose wrapped to the output width (continuation lines indented by 2).
pub fn println_wrapped(text: &str) -> anyhow::Result<()> {
    crate::outln!("{}", wrap(text, 2))?;
    Ok(())
}

/// `verdict: ...`, wrapped, the label in bold when colour is on.
pub fn verdict_line(verdict: &str) -> String {
    let line = wrap(&format!("verdict: {verdict}"), 2);
    match line.strip_prefix("verdict:") {
        Some(rest) => format!("{}{rest}", paint("verdict:", style::EMPHASIS)),
        None => line,
    }
}

/// A comfy-table preset used by every command, sized to the output width (the terminal,
/// `COLUMNS`, or 80 columns in a pipe) and styled only when colour is on.
pub fn table() -> comfy_table::Table {
    let o = output();
    let mut t = comfy_table::Table::new();
    t.load_preset(comfy_table::presets::UTF8_FULL_CONDENSED)
        .set_content_arrangement(comfy_table::ContentArrangement::Dynamic)
        .set_width(u16::try_from(o.width).unwrap_or(u16::MAX));
    if o.color {
        t.enforce_styling();
    } else {
        t.force_no_tty();
    }
    t
}

/// Resolve `HOST:PORT` (`127.0.0.1:8080`, `[::1]:8080`, `localhost:80`) to addresses.
/// A missing or bad port is a usage error (exit 2); a name that does not resolve exits 3.
pub fn resolve_host_port(what: &str, s: &str) -> anyhow::Result<Vec<std::net::SocketAddr>> {
    use crate::exit::{Failure, RESOLVE};
    use std::net::ToSocketAddrs;
    if let Ok(a) = s.parse::<std::net::SocketAddr>() {
        if a.port() == 0 {
            return Err(Failure::usage(format!(
                "{what} '{s}': port 0 is not a port to connect to: use 1..=65535"
            ))
            .into());
        }
        return Ok(vec![a]);
    }
    let Some((host, port)) = s.rsplit_once(':') else {
        return Err(Failure::usage(format!(
            "{what} '{s}' has no port: use HOST:PORT, e.g. 127.0.0.1:8080 or [::1]:8080"
        ))
        .into());
    };
    let port: u16 = match port.parse() {
        Ok(p) if p > 0 => p,
        _ => {
            return Err(Failure::usage(format!(
                "{what} '{s}': port '{port}' is not a number in 1..=65535"
            ))
            .into())
        }
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(Failure::usage(format!("{what} '{s}' has no host: use HOST:PORT")).into());
    }
    match (host, port).to_socket_addrs() {
        Ok(addrs) => {
            let v: Vec<_> = addrs.collect();
            if v.is_empty() {
                Err(Failure::new(RESOLVE, format!("cannot resolve '{host}': no addresses")).into())
            } else {
                Ok(v)
            }
        }
        Err(e) => Err(Failure::new(RESOLVE, format!("cannot resolve '{host}': {e}")).into()),
    }
}

/// Check a numeric flag against its range: `--flag V is out of range: use A..=B` (exit 2).
pub fn in_range<T>(
    flag: &str,
    v: T,
    range: std::ops::RangeInclusive<T>,
) -> Result<T, crate::exit::Failure>
where
    T: PartialOrd + std::fmt::Display + Copy,
{
    if range.contains(&v) {
        Ok(v)
    } else {
        Err(crate::exit::Failure::usage(format!(
            "{flag} {v} is out of range: use {}..={}",
            range.start(),
            range.end()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_numbers_are_seconds() {
        assert_eq!(parse_duration("5").unwrap(), Duration::from_secs(5));
        assert_eq!(parse_duration("2.5").unwrap(), Duration::from_millis(2500));
    }

    #[test]
    fn humantime_forms_parse() {
        assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2h").unwrap(), Duration::from_secs(7200));
    }

    #[test]
    fn garbage_and_negative_are_rejected_with_the_value() {
        let e = parse_duration("soon").unwrap_err();
        assert!(e.contains("'soon'"), "{e}");
        let e = parse_duration("-3").unwrap_err();
        assert!(e.contains("'-3'"), "{e}");
        assert!(parse_duration("").is_err());
        assert!(parse_duration("1e400").is_err());
    }

    #[test]
    fn wrap_breaks_at_spaces_and_indents_continuations() {
        assert_eq!(wrap_to("aaa bbb ccc ddd", 9, 2), "aaa bbb\n  ccc ddd");
        assert_eq!(wrap_to("aaa bbb ccc ddd", 8, 2), "aaa bbb\n  ccc\n  ddd");
        assert_eq!(wrap_to("  x yy zz", 6, 0), "  x yy\n  zz");
        assert_eq!(wrap_to("short\nlines", 80, 4), "short\nlines");
        let long = "a-very-long-word-that-cannot-break";
        assert_eq!(wrap_to(long, 10, 2), long);
        for l in wrap_to(&"word ".repeat(50), 30, 3).lines() {
            assert!(l.chars().count() <= 30, "{l}");
        }
    }

    #[test]
    fn explicit_color_choice_wins_over_the_environment() {
        assert!(wants_color(clap::ColorChoice::Always, false));
        assert!(!wants_color(clap::ColorChoice::Never, true));
    }

    #[test]
    fn in_range_names_flag_value_and_range() {
        assert_eq!(in_range("--n", 5u32, 1..=10).unwrap(), 5);
        let e = in_range("--n", 0u32, 1..=10).unwrap_err();
        assert_eq!(e.code, crate::exit::USAGE);
        assert_eq!(e.message, "--n 0 is out of range: use 1..=10");
    }
}
