//! The terminal: colour, the width to fit, prose wrapping and tables laid out so that no
//! value is broken.

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
}
