//! `kaprobe man [--out DIR]`: man pages generated from the clap definitions.

use std::path::PathBuf;
use std::process::ExitCode;

use crate::exit::{self, Failure};

/// Print kaprobe's man page (roff) on standard output, or write one page per command.
///
/// Without --out: kaprobe(1) on stdout, to read at once (`kaprobe man | man -l -`) or to
/// install. With --out DIR: kaprobe.1 plus kaprobe-watch.1, kaprobe-read.1, ... (one per
/// subcommand, with all its options) into DIR, which must exist.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Examples:
  kaprobe man | man -l -
  kaprobe man --out ~/.local/share/man/man1      # then: man kaprobe-watch
  sudo kaprobe man --out /usr/local/share/man/man1 && sudo mandb

See docs/install.md.")]
pub struct Args {
    /// Write kaprobe.1 and one kaprobe-COMMAND.1 per subcommand into this directory.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
}

pub fn run(args: &Args, cmd: clap::Command) -> anyhow::Result<ExitCode> {
    let cmd = cmd.disable_help_subcommand(true);
    match &args.out {
        None => {
            let buf = one_page(cmd)
                .map_err(|e| Failure::new(exit::FAILURE, format!("render the man page: {e}")))?;
            crate::out::write_all(&buf)
        }
        Some(dir) => {
            if !dir.is_dir() {
                return Err(Failure::usage(format!(
                    "--out {}: not a directory (create it first)",
                    dir.display()
                ))
                .into());
            }
            clap_mangen::generate_to(cmd, dir).map_err(|e| {
                Failure::new(
                    exit::FILE,
                    format!("write man pages into {}: {e}", dir.display()),
                )
            })?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// kaprobe(1) as one page: the top-level sections, then one section per command with its
/// synopsis, description and options (their own headings become subsections).
fn one_page(mut cmd: clap::Command) -> std::io::Result<Vec<u8>> {
    cmd.build();
    let top = clap_mangen::Man::new(cmd.clone());
    let mut buf = Vec::new();
    top.render_title(&mut buf)?;
    top.render_name_section(&mut buf)?;
    top.render_synopsis_section(&mut buf)?;
    top.render_description_section(&mut buf)?;
    top.render_options_section(&mut buf)?;
    top.render_subcommands_section(&mut buf)?;
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let name = sub.get_display_name().unwrap_or_else(|| sub.get_name());
        buf.extend_from_slice(
            format!(".SH \"{}\"\n", name.replace('-', " ").to_uppercase()).as_bytes(),
        );
        let man = clap_mangen::Man::new(sub.clone());
        let mut part = Vec::new();
        man.render_synopsis_section(&mut part)?;
        man.render_description_section(&mut part)?;
        man.render_options_section(&mut part)?;
        if sub.get_after_long_help().is_some() || sub.get_after_help().is_some() {
            man.render_extra_section(&mut part)?;
        }
        for line in String::from_utf8_lossy(&part).lines() {
            match line.strip_prefix(".SH ") {
                Some(heading) => buf.extend_from_slice(format!(".SS {heading}\n").as_bytes()),
                None => {
                    buf.extend_from_slice(line.as_bytes());
                    buf.push(b'\n');
                }
            }
        }
    }
    top.render_version_section(&mut buf)?;
    Ok(buf)
}
