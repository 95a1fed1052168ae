//! `kaprobe completions SHELL`: a completion script generated from the clap definitions.

use std::process::ExitCode;

use clap_complete::Shell;

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
    crate::out::write_all(&buf)
}
