//! `kaprobe serve` (not built yet).

use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct Args {}

pub fn run(_args: Args) -> anyhow::Result<ExitCode> {
    Err(crate::exit::Failure::new(crate::exit::FAILURE, "'kaprobe serve' is not built yet").into())
}
