//! The `kaprobe` binary: parse arguments, call a library, render the result.
//!
//! Every command lives in `cmd/<name>.rs` with an `Args` struct and a `run` function; no
//! command imports another. What they share:
//!
//! - `args`: argument helpers (durations, ranges, addresses, the TLS group, `--metrics`);
//! - `exit`: the exit-code table and one conversion per library error type;
//! - `term`: colour, width, wrapping and table layout (pure, no output);
//! - `out`: stdout (lines, JSON lines, tables) ending quietly when its reader goes away;
//! - `measure`: the runtime for HTTP measurements and their JSON-or-rendered report;
//! - `render`: how capture results (`read`, `watch`) and HTTP reports (`probe`, `demo`) look;
//! - `util`: durations as kaprobe writes them, the stop flag, the child-process guard.
//!
//! Dependencies run one way: `term` and `util` depend on nothing here, `exit` on `term`,
//! `out` on `exit` and `term`, everything else on those.

use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

mod args;
mod cmd;
mod exit;
mod measure;
mod out;
mod render;
mod term;
mod util;

/// See and test how idle connections live and die: TCP keep-alive and HTTP keep-alive.
///
/// kaprobe sets and reads TCP keep-alive timers on real sockets, watches the kernel's
/// keep-alive probes on the wire, serves HTTP with keep-alive behaviour you control, and
/// measures what a server or proxy really does with idle connections.
///
/// Start with `kaprobe demo`: it needs no arguments and no root.
#[derive(Debug, Parser)]
#[command(
    name = "kaprobe",
    version,
    propagate_version = true,
    max_term_width = 100
)]
struct Cli {
    /// Colour: auto (terminals only; honours NO_COLOR, CLICOLOR_FORCE), always, never.
    #[arg(
        long,
        global = true,
        value_name = "WHEN",
        default_value = "auto",
        hide_possible_values = true
    )]
    color: clap::ColorChoice,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// A guided tour on loopback: keep-alive timers ticking and probes answered (no arguments).
    Demo(cmd::demo::Args),
    /// The system keep-alive defaults (net.ipv4.tcp_keepalive_*) and what they mean.
    Defaults(cmd::defaults::Args),
    /// Hold one idle connection with chosen keep-alive settings and report how it ends.
    Hold(cmd::hold::Args),
    /// Live TCP sockets with their keep-alive timers, like `ss -tno` (via sock_diag).
    Sockets(cmd::sockets::Args),
    /// Watch keep-alive probes live on a network interface.
    Watch(cmd::watch::Args),
    /// Find keep-alive probes in a pcap or pcapng file.
    Read(cmd::read::Args),
    /// Serve HTTP/1.x with exact, configurable keep-alive behaviour and logged close reasons.
    Serve(cmd::serve::Args),
    /// Measure what a server or proxy does with idle HTTP, WebSocket and SSE connections.
    Probe(cmd::probe::Args),
    /// Relay TCP to an upstream and cut idle connections, as a NAT or load balancer does.
    Middlebox(cmd::middlebox::Args),
    /// Answer Prometheus scrapes of /probe?target=URL with a probe's result (like blackbox_exporter).
    Exporter(cmd::exporter::Args),
    /// Reproduce the keep-alive reuse race against a URL and count failures per idle time.
    Race(cmd::race::Args),
    /// Benchmarks: `bench push` compares polling, long polling, SSE and WebSocket per message.
    Bench(cmd::bench::Args),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions(cmd::completions::Args),
    /// Print the man page (roff), or write one page per command into a directory.
    Man(cmd::man::Args),
}

/// `--color WHEN` as given on the command line (before clap parses it, so that clap's own
/// help and error messages follow it too). A bad value is left for clap to report.
fn color_arg(args: &[std::ffi::OsString]) -> clap::ColorChoice {
    use clap::ValueEnum;
    let mut choice = clap::ColorChoice::Auto;
    let mut it = args.iter().skip(1).map(|a| a.to_string_lossy());
    while let Some(a) = it.next() {
        let value = if a == "--" {
            break;
        } else if a == "--color" {
            it.next().map(|v| v.into_owned())
        } else {
            a.strip_prefix("--color=").map(str::to_string)
        };
        if let Some(v) = value {
            if let Ok(c) = clap::ColorChoice::from_str(&v, false) {
                choice = c;
            }
        }
    }
    choice
}

/// The clap definition with the run's colour and width applied.
fn command_for(color: clap::ColorChoice, width: usize) -> clap::Command {
    reflow_help(Cli::command())
        .color(color)
        .term_width(width.min(crate::term::PROSE_MAX))
}

/// The after-help texts are written with hard line breaks; join the lines of each prose
/// paragraph so clap wraps them to the terminal instead of breaking them twice.
fn reflow_help(c: clap::Command) -> clap::Command {
    let mut c = c.mut_subcommands(reflow_help);
    if let Some(t) = c.get_after_help().map(ToString::to_string) {
        c = c.after_help(reflow(&t));
    }
    if let Some(t) = c.get_after_long_help().map(ToString::to_string) {
        c = c.after_long_help(reflow(&t));
    }
    c
}

/// Join consecutive unindented, non-empty lines with a space; keep blank lines, indented
/// lines (examples, tables) and the line breaks around them.
fn reflow(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut prev_prose = false;
    for (i, line) in text.split('\n').enumerate() {
        let prose = !line.is_empty() && !line.starts_with(char::is_whitespace);
        if i > 0 {
            out.push(if prev_prose && prose { ' ' } else { '\n' });
        }
        out.push_str(line);
        prev_prose = prose;
    }
    out
}

fn main() -> ExitCode {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let choice = color_arg(&args);
    let out = crate::term::init_output(choice);
    // clap's help (stdout) and usage errors (stderr) follow the same choice; under `auto`
    // clap applies the same NO_COLOR / CLICOLOR_FORCE / terminal rules per stream.
    let cli = command_for(choice, out.width)
        .try_get_matches_from(&args)
        .and_then(|mut m| Cli::from_arg_matches_mut(&mut m));
    let cli = match cli {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    let result = match cli.command {
        Command::Demo(a) => cmd::demo::run(a),
        Command::Defaults(a) => cmd::defaults::run(a),
        Command::Hold(a) => cmd::hold::run(a),
        Command::Sockets(a) => cmd::sockets::run(a),
        Command::Watch(a) => cmd::watch::run(a),
        Command::Read(a) => cmd::read::run(a),
        Command::Serve(a) => cmd::serve::run(a),
        Command::Probe(a) => cmd::probe::run(a),
        Command::Race(a) => cmd::race::run(a),
        Command::Middlebox(a) => cmd::middlebox::run(a),
        Command::Exporter(a) => cmd::exporter::run(a),
        Command::Bench(a) => cmd::bench::run(a),
        Command::Completions(a) => cmd::completions::run(&a, Cli::command()),
        Command::Man(a) => cmd::man::run(&a, Cli::command()),
    };
    match result {
        Ok(code) => code,
        // The reader of stdout went away (`kaprobe demo | head -1`): end quietly, like
        // finishing; the command has already cleaned up on the way here.
        Err(err) if err.downcast_ref::<crate::out::StdoutClosed>().is_some() => ExitCode::SUCCESS,
        Err(err) => exit::report(&err),
    }
}

#[cfg(test)]
mod tests {
    use super::reflow;

    #[test]
    fn reflow_joins_prose_lines_and_keeps_examples_and_blank_lines() {
        let t = "First line of a\nparagraph.\n\nExamples:\n  kaprobe a\n  kaprobe b\nExit: 0\nok.";
        assert_eq!(
            reflow(t),
            "First line of a paragraph.\n\nExamples:\n  kaprobe a\n  kaprobe b\nExit: 0 ok."
        );
    }
}
