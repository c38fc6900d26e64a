//! The `courier` command line.

use clap::{Parser, Subcommand};

mod compare;

/// Courier: pluggable-transport messaging for n-d arrays.
#[derive(Debug, Parser)]
#[command(name = "courier", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Compare the transports on this machine: array-sized stream throughput and small-message
    /// round trips over tcp:// and inproc://, next to a raw tokio socket, in one run.
    Compare(compare::Args),
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_env("COURIER_LOG"))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let multi = || tokio::runtime::Builder::new_multi_thread().enable_all().build();
    match cli.command {
        Command::Compare(args) => {
            multi()?.block_on(compare::streams(&args))?;
            // Round trips are dominated by task wake-ups: show both runtime flavours.
            multi()?.block_on(compare::echoes(&args, "multi-thread"))?;
            let current = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            current.block_on(compare::echoes(&args, "current-thread"))
        }
    }
}
