//! `kaprobe race` (not built yet).

use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct Args {}

pub fn run(_args: Args) -> anyhow::Result<ExitCode> {
    Err(crate::exit::Failure::new(crate::exit::FAILURE, "'kaprobe race' is not built yet").into())
}
