//! The `kaprobe` binary: parse arguments, call a library, render the result.
//!
//! Every command lives in `cmd/<name>.rs` with an `Args` struct and a `run` function.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod cmd;
mod exit;
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
    /// Reproduce the keep-alive reuse race against a URL and count failures per idle time.
    Race(cmd::race::Args),
    /// Benchmarks: `bench push` compares polling, long polling, SSE and WebSocket per message.
    Bench(cmd::bench::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
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
        Command::Bench(a) => cmd::bench::run(a),
    };
    match result {
        Ok(code) => code,
        Err(err) => exit::report(&err),
    }
}
