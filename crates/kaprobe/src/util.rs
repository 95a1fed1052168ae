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
        crate::exit::Failure::new(
            crate::exit::FAILURE,
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

/// Lay out a table so that no word is broken: each column gets at least its longest word
/// (a value such as `4.80-4.84s`, `[::1]:8080` or a row of dots) and its share of the rest
/// of the width; cells are wrapped between words. When even the longest words do not fit
/// the table's width, comfy-table's own arrangement (which may break words) is kept, so the
/// table still honours the width. `color` picks a colour per cell (row, column, text).
pub fn lay_out_table(
    t: comfy_table::Table,
    color: impl Fn(usize, usize, &str) -> Option<comfy_table::Color>,
) -> comfy_table::Table {
    let header: Option<Vec<String>> = t
        .header()
        .map(|h| h.cell_iter().map(comfy_table::Cell::content).collect());
    let rows: Vec<Vec<String>> = t
        .row_iter()
        .map(|r| r.cell_iter().map(comfy_table::Cell::content).collect())
        .collect();
    let n = header
        .iter()
        .chain(rows.iter())
        .map(Vec::len)
        .max()
        .unwrap_or(0);
    let width = t.width().map_or(usize::MAX, usize::from);
    let Some(widths) = column_widths(header.iter().chain(rows.iter()), n, width) else {
        return match &header {
            Some(h) if n > 2 => records(h, &rows, width, &color).unwrap_or(t),
            _ => t,
        };
    };
    let mut out = table();
    out.set_content_arrangement(comfy_table::ContentArrangement::Disabled);
    let wrap_row = |row: &[String], r: Option<usize>| -> Vec<comfy_table::Cell> {
        row.iter()
            .enumerate()
            .map(|(c, text)| {
                let w = widths.get(c).copied().unwrap_or(1);
                let mut cell = comfy_table::Cell::new(wrap_to(text, w, 0));
                if let Some(col) = r.and_then(|r| color(r, c, text)) {
                    cell = cell.fg(col);
                }
                cell
            })
            .collect()
    };
    if let Some(h) = &header {
        out.set_header(wrap_row(h, None));
    }
    for (r, row) in rows.iter().enumerate() {
        out.add_row(wrap_row(row, Some(r)));
    }
    out
}

/// A table too wide for `width` as records: one row per cell, the column's name beside
/// the value, each record's first row set off by a line. `None` when even that does not
/// fit without breaking a word.
fn records(
    header: &[String],
    rows: &[Vec<String>],
    width: usize,
    color: &impl Fn(usize, usize, &str) -> Option<comfy_table::Color>,
) -> Option<comfy_table::Table> {
    let pairs: Vec<Vec<String>> = rows
        .iter()
        .flat_map(|row| {
            row.iter()
                .enumerate()
                .map(|(c, v)| vec![header.get(c).cloned().unwrap_or_default(), v.clone()])
        })
        .collect();
    let widths = column_widths(pairs.iter(), 2, width)?;
    let mut out = table();
    out.set_content_arrangement(comfy_table::ContentArrangement::Disabled);
    for (r, row) in rows.iter().enumerate() {
        if r > 0 {
            out.add_row(vec![String::new(), String::new()]);
        }
        for (c, v) in row.iter().enumerate() {
            let name = header.get(c).map_or("", String::as_str);
            let mut value = comfy_table::Cell::new(wrap_to(v, widths[1], 0));
            if let Some(col) = color(r, c, v) {
                value = value.fg(col);
            }
            out.add_row(vec![
                comfy_table::Cell::new(wrap_to(name, widths[0], 0)),
                value,
            ]);
        }
    }
    Some(out)
}

/// Content widths for `n` columns of `rows` in a table `width` wide (borders and one space
/// of padding either side included), never below a column's longest word; `None` when the
/// longest words alone do not fit.
fn column_widths<'a>(
    rows: impl Iterator<Item = &'a Vec<String>>,
    n: usize,
    width: usize,
) -> Option<Vec<usize>> {
    let mut least = vec![0usize; n];
    let mut natural = vec![0usize; n];
    for row in rows {
        for (c, text) in row.iter().enumerate() {
            for line in text.lines() {
                natural[c] = natural[c].max(line.chars().count());
                for word in line.split(' ') {
                    least[c] = least[c].max(word.chars().count());
                }
            }
        }
    }
    let avail = width.checked_sub(3 * n + 1)?;
    let (sum_least, sum_natural) = (least.iter().sum::<usize>(), natural.iter().sum::<usize>());
    if sum_natural <= avail {
        return Some(natural);
    }
    if sum_least > avail {
        return None;
    }
    // Share the spare width in proportion to what each column still lacks.
    let spare = avail - sum_least;
    let lacking = sum_natural - sum_least;
    let mut widths: Vec<usize> = least
        .iter()
        .zip(&natural)
        .map(|(l, nat)| l + (nat - l) * spare / lacking)
        .collect();
    // Hand out what integer division left over, one column at a time.
    let mut left = avail - widths.iter().sum::<usize>();
    for (w, nat) in widths.iter_mut().zip(&natural) {
        if left == 0 {
            break;
        }
        let more = (nat - *w).min(left);
        *w += more;
        left -= more;
    }
    Some(widths)
}

/// Print a table laid out by [`lay_out_table`].
pub fn print_table(t: comfy_table::Table) -> anyhow::Result<()> {
    let t = lay_out_table(t, |_, _, _| None);
    crate::outln!("{t}")?;
    Ok(())
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

    fn laid_out(width: u16, header: &[&str], rows: &[&[&str]]) -> String {
        let mut t = table();
        t.set_width(width);
        t.set_header(header.to_vec());
        for r in rows {
            t.add_row(r.to_vec());
        }
        lay_out_table(t, |_, _, _| None).to_string()
    }

    #[test]
    fn tables_wrap_between_words_and_fit() {
        let header = ["idle", "tries", "ok", "reuses", "how it ended"];
        let rows: &[&[&str]] = &[
            &[
                "0.80-0.84s",
                "6",
                "6",
                "......",
                "closed by the server with FIN",
            ],
            &["[2001:db8::1]:8080", "12", "0", "######", "reset"],
        ];
        for width in [31u16, 40, 50, 60, 80, 200] {
            let out = laid_out(width, &header, rows);
            for line in out.lines() {
                assert!(
                    line.chars().count() <= usize::from(width),
                    "{width}:\n{out}"
                );
            }
            // Every value is whole on one line.
            for v in [
                "0.80-0.84s",
                "[2001:db8::1]:8080",
                "......",
                "######",
                "FIN",
            ] {
                assert!(out.contains(v), "{width}: {v} broken:\n{out}");
            }
        }
        // Wide enough: one line per row.
        assert_eq!(laid_out(200, &header, rows).lines().count(), 6);
    }

    #[test]
    fn column_widths_share_the_spare_width() {
        let rows = [
            vec!["aaaa bbbb cccc".to_string(), "x".to_string()],
            vec!["dd".to_string(), "yy zz".to_string()],
        ];
        // Natural fits: natural widths.
        assert_eq!(column_widths(rows.iter(), 2, 40), Some(vec![14, 5]));
        // Least words (4 + 2) + borders (7) = 13: fits at 13, not at 12.
        assert_eq!(column_widths(rows.iter(), 2, 13), Some(vec![4, 2]));
        assert_eq!(column_widths(rows.iter(), 2, 12), None);
        let w = column_widths(rows.iter(), 2, 20).unwrap();
        assert_eq!(w.iter().sum::<usize>(), 13);
        assert!(w[0] >= 4 && w[1] >= 2, "{w:?}");
    }

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
