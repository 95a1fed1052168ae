//! `kaprobe completions SHELL`: a completion script generated from the clap definitions.

use std::io::Write;
use std::process::ExitCode;

use clap_complete::Shell;

use crate::exit::{self, Failure};

/// Print a shell completion script for kaprobe on standard output.
///
/// The script completes subcommands, flags and flag values (shells, --log formats, ...)
/// from the same definitions that parse the command line, so it is never out of date with
/// the binary that printed it.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Examples:
  source <(kaprobe completions bash)                  # this bash session only
  kaprobe completions bash > ~/.local/share/bash-completion/completions/kaprobe
  kaprobe completions zsh > ~/.zfunc/_kaprobe   # fpath+=(~/.zfunc) in ~/.zshrc
  kaprobe completions fish > ~/.config/fish/completions/kaprobe.fish

See docs/install.md.")]
pub struct Args {
    /// The shell to complete for.
    #[arg(value_name = "SHELL")]
    pub shell: Shell,
}

pub fn run(args: &Args, mut cmd: clap::Command) -> anyhow::Result<ExitCode> {
    let mut buf = Vec::new();
    clap_complete::generate(args.shell, &mut cmd, "kaprobe", &mut buf);
    write_stdout(&buf)
}

/// Write generated text to stdout; a reader that went away is not an error.
pub(crate) fn write_stdout(buf: &[u8]) -> anyhow::Result<ExitCode> {
    let mut out = std::io::stdout().lock();
    match out.write_all(buf).and_then(|()| out.flush()) {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(ExitCode::SUCCESS),
        Err(e) => Err(Failure::new(
            exit::FAILURE,
            format!("write to stdout: {}", kaprobe_sock::fmt::os_error(&e)),
        )
        .into()),
    }
}
