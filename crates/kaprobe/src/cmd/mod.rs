//! One module per subcommand; each has `Args` (clap) and `run(Args) -> anyhow::Result<ExitCode>`.

pub mod bench;
pub mod completions;
pub mod defaults;
pub mod demo;
pub mod exporter;
pub mod hold;
pub mod man;
pub mod middlebox;
pub mod probe;
pub mod race;
pub mod read;
pub mod serve;
pub mod sockets;
pub mod watch;
